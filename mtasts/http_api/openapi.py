"""The HTTP API's OpenAPI 3.1 document (served at ``GET /v1/openapi.json``; docs/http-api.md describes it).

The schemas are JSON Schema 2020-12, as OpenAPI 3.1 uses it; the test suite validates every live response of
the server against them. Pure data: no I/O.
"""

from __future__ import annotations

from typing import Any, Final

from ..decision import LookupStatus
from ..policy import Mode
from .answers import TLS_FAILURES

__all__ = ["OPENAPI_VERSION", "openapi_document"]

OPENAPI_VERSION: Final = "3.1.0"

_NULLABLE_STRING: Final = {"type": ["string", "null"]}
_TIME: Final = {
    "type": ["string", "null"],
    "format": "date-time",
    "description": "RFC 3339, UTC, to the second (2026-12-01T16:07:12Z); null without a policy",
}
_ERROR_TEXT: Final = {"type": "string", "description": "what went wrong, in one line"}


def _schemas() -> dict[str, Any]:
    statuses = [str(status) for status in LookupStatus]
    modes = [str(mode) for mode in Mode]
    status = {
        "type": "string",
        "enum": statuses,
        "description": "how the lookup ended: fetched, cached, no-policy, dns-error, fetch-error, not-applicable "
        "(an address literal), local-error (a fault on this host: never means no policy)",
    }
    mode = {"type": ["string", "null"], "enum": [*modes, None], "description": "the policy's mode; null: no policy"}
    defer = {
        "type": "boolean",
        "description": "true: no answer can be given now (local-error, or dns-error under dns_error = defer); "
        "the status code is then 503: defer the mail and try again later",
    }
    return {
        "Policy": {
            "type": "object",
            "description": "The MTA-STS policy mtasts applies now to mail for the domain.",
            "required": [
                "domain",
                "status",
                "mode",
                "mx",
                "max_age",
                "id",
                "fetched_at",
                "expires_at",
                "result_type",
                "from_cache",
                "defer",
                "detail",
            ],
            "additionalProperties": False,
            "properties": {
                "domain": {"type": "string", "description": "the Policy Domain, normalised (A-labels, lowercase)"},
                "status": status,
                "mode": mode,
                "mx": {
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "description": "the policy's mx patterns in file order (lowercase A-labels); null: no policy",
                },
                "max_age": {"type": ["integer", "null"], "minimum": 0, "description": "seconds; null: no policy"},
                "id": {**_NULLABLE_STRING, "description": "the _mta-sts TXT record's id of the policy, if known"},
                "fetched_at": _TIME,
                "expires_at": _TIME,
                "result_type": {
                    **_NULLABLE_STRING,
                    "description": "RFC 8460 result type of a failure seen by this lookup (also when a cached "
                    "policy still applies)",
                },
                "from_cache": {"type": "boolean", "description": "answered from memory, with no DNS or HTTPS"},
                "defer": defer,
                "detail": {**_NULLABLE_STRING, "description": "why the lookup failed, if it did"},
                "error": {**_ERROR_TEXT, "description": "only with status code 503: why to try again later"},
            },
        },
        "VerdictRequest": {
            "type": "object",
            "required": ["domain", "mx_host"],
            "additionalProperties": False,
            "properties": {
                "domain": {"type": "string", "description": "the recipient domain (the Policy Domain)"},
                "mx_host": {"type": "string", "description": "the MX host name to deliver to"},
                "tls_failure": {
                    "type": ["string", "null"],
                    "enum": [*TLS_FAILURES, None],
                    "default": None,
                    "description": "null: STARTTLS done and the certificate valid for mx_host (RFC 8461 §4.2), or "
                    "not tried yet; else how the TLS session failed (RFC 8460 §4.3)",
                },
            },
        },
        "Verdict": {
            "type": "object",
            "description": "May the message go to this MX over this TLS session (RFC 8461 §5)?",
            "required": [
                "domain",
                "mx_host",
                "status",
                "deliver",
                "require_tls",
                "result_type",
                "failure_reason_code",
                "mode",
                "defer",
            ],
            "additionalProperties": False,
            "properties": {
                "domain": {"type": "string"},
                "mx_host": {"type": "string", "description": "normalised"},
                "status": status,
                "deliver": {"type": "boolean", "description": "may the message go to this MX now?"},
                "require_tls": {
                    "type": "boolean",
                    "description": "never fall back to plaintext (enforce; also true when deferred)",
                },
                "result_type": {
                    **_NULLABLE_STRING,
                    "description": "RFC 8460 result type to report (also under testing); null: all is well",
                },
                "failure_reason_code": {
                    **_NULLABLE_STRING,
                    "description": "RFC 8460 failure-reason-code, e.g. mx-not-in-sts-policy",
                },
                "mode": mode,
                "defer": defer,
                "error": {**_ERROR_TEXT, "description": "only with status code 503: why to try again later"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {"error": _ERROR_TEXT},
        },
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _deferred(name: str) -> dict[str, Any]:
    """A 503: the answer when the lookup came back deferred (with ``error``), or only an error."""
    return {"anyOf": [{"allOf": [_ref(name), {"required": ["error"]}]}, _ref("Error")]}


_RETRY_AFTER: Final = {
    "Retry-After": {"description": "seconds to wait before asking again", "schema": {"type": "integer"}}
}


def _errors(*statuses: str) -> dict[str, Any]:
    reasons = {
        "400": "bad input: not a domain name, malformed JSON, an unknown field, a bad value",
        "405": "the route exists, not with this method (the Allow header lists the methods)",
        "408": "the request body did not arrive within the request timeout",
        "413": "the request body is larger than the limit (4096 bytes)",
        "500": "an internal error of mtasts: treat as temporary",
    }
    responses = {status: _json(_ref("Error"), reasons[status]) for status in statuses}
    responses["default"] = _json(_ref("Error"), "any other error, such as 404 for an unknown route")
    return responses


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API (a new dict on every call)."""
    domain_parameter = {
        "name": "domain",
        "in": "path",
        "required": True,
        "description": "the Policy Domain (any case, trailing dot allowed, U-labels percent-encoded as UTF-8)",
        "schema": {"type": "string"},
    }
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "mtasts HTTP API",
            "version": "1",
            "description": "MTA-STS (RFC 8461) policies and verdicts for mail relays: mtasts serve-http "
            "(docs/http-api.md). Any 503 means: defer the mail and try again later — never 'no policy'.",
        },
        "paths": {
            "/v1/policy/{domain}": {
                "get": {
                    "operationId": "getPolicy",
                    "summary": "the MTA-STS policy that applies now to mail for a domain",
                    "parameters": [domain_parameter],
                    "responses": {
                        "200": _json(_ref("Policy"), "the lookup's outcome (also no-policy, fetch-error...)"),
                        "503": {
                            **_json(
                                _deferred("Policy"),
                                "no answer now (a local fault, dns_error = defer, the request timeout): defer",
                            ),
                            "headers": _RETRY_AFTER,
                        },
                        **_errors("400", "405", "500"),
                    },
                }
            },
            "/v1/verdict": {
                "post": {
                    "operationId": "postVerdict",
                    "summary": "may a message for domain go to mx_host over a session with this TLS outcome?",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("VerdictRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("Verdict"), "the verdict (RFC 8461 §5)"),
                        "503": {
                            **_json(_deferred("Verdict"), "no answer now: do not deliver, try again later"),
                            "headers": _RETRY_AFTER,
                        },
                        **_errors("400", "405", "408", "413", "500"),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "this document",
                    "responses": {
                        "200": _json({"type": "object"}, "the OpenAPI 3.1 document"),
                        **_errors("405"),
                    },
                }
            },
        },
        "components": {"schemas": _schemas()},
    }
