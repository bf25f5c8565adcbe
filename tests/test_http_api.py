"""``mtasts serve-http``: the HTTP API over real sockets, with a real HTTP client (aiohttp), against a loopback World.

Every response a test gets through the ``api`` fixture is validated, when the test ends, against the OpenAPI
document the live server serves (``GET /v1/openapi.json``) with ``jsonschema``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest
from multidict import CIMultiDictProxy

from mtasts import LookupStatus, PolicyResolver, parse_policy
from mtasts.errors import MTASTSError, UsageError
from mtasts.http_api import (
    TLS_FAILURES,
    HttpApiServer,
    VerdictRequest,
    openapi_document,
    parse_listen,
    parse_verdict_request,
    serve_http,
)
from mtasts.http_api.answers import rfc3339
from mtasts.stores import MemoryStore
from mtasts.testing import World

from ._process import stop_process
from ._purity import absolute_imports
from .conftest import FakeClock
from .test_socketmap import world_config

ROOT = Path(__file__).resolve().parent.parent
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 3600\n"
NONE = "version: STSv1\nmode: none\nmax_age: 600\n"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE, id="20261201")
        w.publish("testing.example", TESTING)
        w.publish("none.example", NONE)
        w.publish("servfail.example", ENFORCE, txt_failure="servfail")
        w.publish("not-found.example", None)  # a TXT record, but the policy URL answers 404
        w.publish("slow.example", ENFORCE, delay=0.6)
        w.publish("slow2.example", ENFORCE, delay=0.6)
        w.publish("d1.example", ENFORCE)
        yield w
        assert not w.errors


class Api:
    """An aiohttp client of one server that keeps every (route, method, status, JSON body) it saw."""

    def __init__(self, session: aiohttp.ClientSession, server: HttpApiServer) -> None:
        self.session = session
        self.server = server
        self.seen: list[tuple[str | None, str, int, Any]] = []

    async def request(
        self, method: str, path: str, body: bytes | dict[str, Any] | None = None, **kwargs: Any
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        async with self.session.request(method, self.server.url + path, data=data, **kwargs) as response:
            assert response.content_type == "application/json", await response.text()
            answer = json.loads(await response.read())  # JSON on every route and every status, errors included
            self.seen.append((route_of(path), method, response.status, answer))
            return response.status, answer, response.headers

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, CIMultiDictProxy[str]]:
        return await self.request("GET", path, **kwargs)

    async def policy(self, domain: str) -> tuple[int, Any]:
        status, answer, _ = await self.get(f"/v1/policy/{domain}")
        return status, answer

    async def verdict(self, body: bytes | dict[str, Any]) -> tuple[int, Any]:
        status, answer, _ = await self.request("POST", "/v1/verdict", body)
        return status, answer


def route_of(path: str) -> str | None:
    """The OpenAPI path template a request path belongs to (None: no route)."""
    if re.fullmatch(r"/v1/policy/[^/]+", path):
        return "/v1/policy/{domain}"
    return path if path in ("/v1/verdict", "/v1/openapi.json") else None


def validate(document: dict[str, Any], route: str | None, method: str, status: int, body: Any) -> None:
    """``body`` against the schema the OpenAPI document gives for this response (or Error, for no route)."""
    if route is None or method.lower() not in document["paths"][route]:
        schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
    else:
        responses = document["paths"][route][method.lower()]["responses"]
        response = responses.get(str(status), responses["default"])
        schema = response["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(body)


@pytest.fixture
async def server(resolver: PolicyResolver) -> AsyncIterator[HttpApiServer]:
    async with HttpApiServer(resolver, port=0) as s:
        yield s


@pytest.fixture
async def api(server: HttpApiServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        client = Api(session, server)
        yield client
        if client.seen:  # the live document, fetched from the same server
            async with session.get(server.url + "/v1/openapi.json") as response:
                document = await response.json()
            for seen in client.seen:
                validate(document, *seen)


# -- GET /v1/policy/{domain} ----------------------------------------------------------------------------------------


async def test_policy_of_an_enforce_domain(world: World, api: Api, clock: FakeClock) -> None:
    status, answer = await api.policy("enforce.example")
    assert status == 200
    assert answer == {
        "domain": "enforce.example",
        "status": "fetched",
        "mode": "enforce",
        "mx": ["mx.example.com", "*.example.net"],
        "max_age": 86400,
        "id": "20261201",
        "fetched_at": rfc3339(clock()),
        "expires_at": rfc3339(clock() + 86400),
        "result_type": None,
        "from_cache": False,
        "defer": False,
        "detail": None,
    }
    assert answer["fetched_at"] == "2027-01-15T08:00:00Z"  # FakeClock's 1,800,000,000
    for form in ("enforce.example", "ENFORCE.Example.", "enforce.example."):
        status, again = await api.policy(form)
        assert status == 200
        assert again == {**answer, "status": "cached", "from_cache": True}
    assert world.requests("mta-sts.enforce.example") == 1
    assert api.server.requests == 4


async def test_policy_of_testing_none_and_no_policy_domains(api: Api) -> None:
    status, testing = await api.policy("testing.example")
    assert (status, testing["mode"], testing["mx"], testing["max_age"]) == (200, "testing", ["mx.example.com"], 3600)
    status, none = await api.policy("none.example")
    assert (status, none["mode"], none["mx"], none["max_age"]) == (200, "none", [], 600)
    status, absent = await api.policy("nothing-published.example")
    assert status == 200
    assert absent == {
        "domain": "nothing-published.example",
        "status": "no-policy",
        "mode": None,
        "mx": None,
        "max_age": None,
        "id": None,
        "fetched_at": None,
        "expires_at": None,
        "result_type": None,
        "from_cache": False,
        "defer": False,
        "detail": absent["detail"],
    }
    status, failed = await api.policy("not-found.example")  # RFC 8461 §3.3: no usable policy, deliver as without
    assert (status, failed["status"], failed["mode"], failed["result_type"]) == (
        200,
        "fetch-error",
        None,
        "sts-policy-fetch-error",
    )
    assert not failed["defer"]


async def test_policy_of_a_u_label_domain_is_normalised(world: World, api: Api) -> None:
    world.publish("xn--bcher-kva.example", TESTING)
    status, answer = await api.policy("B%C3%BCcher.example")  # "Bücher.example", percent-encoded UTF-8
    assert (status, answer["domain"], answer["mode"]) == (200, "xn--bcher-kva.example", "testing")


@pytest.mark.parametrize(
    "name", ["exa%20mple.example", "-bad.example", "a_b.example", "x" * 64 + ".example", "a..example", "%00.example"]
)
async def test_policy_of_a_bad_name_is_400(world: World, api: Api, name: str) -> None:
    status, answer = await api.policy(name)
    assert status == 400
    assert answer["error"].startswith("domain: ")
    assert not world.dns_log  # refused before any I/O


async def test_policy_of_an_address_literal_does_not_apply(api: Api) -> None:
    status, answer = await api.policy("[192.0.2.1]")
    assert (status, answer["status"], answer["mode"], answer["defer"]) == (200, "not-applicable", None, False)


# -- POST /v1/verdict -------------------------------------------------------------------------------------------


VF, NOT_IN = "validation-failure", "mx-not-in-sts-policy"
EXPIRED, NO_TLS, UNTRUSTED = "certificate-expired", "starttls-not-supported", "certificate-not-trusted"


@pytest.mark.parametrize(
    ("domain", "mx_host", "tls_failure", "expected"),
    [
        # enforce: deliver only to a matching MX over validated TLS
        ("enforce.example", "mx.example.com", None, (True, True, None, None, "enforce")),
        ("enforce.example", "MX.Example.com.", None, (True, True, None, None, "enforce")),
        ("enforce.example", "a.example.net", None, (True, True, None, None, "enforce")),
        ("enforce.example", "a.b.example.net", None, (False, True, VF, NOT_IN, "enforce")),
        ("enforce.example", "evil.example", None, (False, True, VF, NOT_IN, "enforce")),
        ("enforce.example", "mx.example.com", EXPIRED, (False, True, EXPIRED, None, "enforce")),
        ("enforce.example", "evil.example", EXPIRED, (False, True, VF, NOT_IN, "enforce")),
        ("enforce.example", "mx.example.com", NO_TLS, (False, True, NO_TLS, None, "enforce")),
        # testing: deliver always, and say what failed
        ("testing.example", "evil.example", None, (True, False, VF, NOT_IN, "testing")),
        ("testing.example", "mx.example.com", UNTRUSTED, (True, False, UNTRUSTED, None, "testing")),
        # none, no policy, an address literal: as without MTA-STS
        ("none.example", "anything.example", "starttls-not-supported", (True, False, None, None, "none")),
        ("nothing-published.example", "mx.example.com", None, (True, False, None, None, None)),
        ("[192.0.2.1]", "mx.example.com", None, (True, False, None, None, None)),
    ],
)  # fmt: skip
async def test_verdict(api: Api, domain: str, mx_host: str, tls_failure: str | None, expected: tuple[Any, ...]) -> None:
    status, answer = await api.verdict({"domain": domain, "mx_host": mx_host, "tls_failure": tls_failure})
    assert status == 200
    fields = ("deliver", "require_tls", "result_type", "failure_reason_code", "mode")
    assert tuple(answer[field] for field in fields) == expected
    assert answer["defer"] is False
    assert answer["mx_host"] == mx_host.lower().rstrip(".")


async def test_verdict_without_tls_failure_means_tls_succeeded(api: Api) -> None:
    status, answer = await api.verdict({"domain": "Enforce.Example", "mx_host": "mx.example.com"})
    assert (status, answer["domain"], answer["deliver"], answer["require_tls"]) == (200, "enforce.example", True, True)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "the body is not JSON"),
        (b"", "the body is not JSON"),
        (b"\xff\xfe\xfa", "the body is not"),
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
        (b'["enforce.example", "mx.example.com"]', "must be a JSON object"),
        (b'"enforce.example"', "must be a JSON object"),
        (b'{"domain": "enforce.example"}', "mx_host is missing"),
        (b'{"mx_host": "mx.example.com"}', "domain is missing"),
        (b'{"domain": 1, "mx_host": "mx.example.com"}', "domain must be a string, not a number"),
        (b'{"domain": "enforce.example", "mx_host": null}', "mx_host must be a string, not null"),
        (b'{"domain": "enforce.example", "mx_host": "mx.example.com", "tls_fail": "x"}', 'unknown field "tls_fail"'),
        (b'{"domain": "enforce.example", "mx_host": "mx.example.com", "tls_failure": "expired"}', "tls_failure must"),
        (b'{"domain": "enforce.example", "mx_host": "mx.example.com", "tls_failure": true}', "tls_failure must"),
        (b'{"domain": "enforce.example", "mx_host": "mx example.com"}', "mx_host: not a valid host name"),
        (b'{"domain": "enforce.example", "mx_host": "[192.0.2.1]"}', "mx_host: "),
        (b'{"domain": "a/b.example", "mx_host": "mx.example.com"}', "domain: not a valid host name"),
    ],
)
async def test_verdict_bad_input_is_400(world: World, api: Api, body: bytes, error: str) -> None:
    status, answer = await api.verdict(body)
    assert status == 400
    assert set(answer) == {"error"}
    assert error in answer["error"]
    assert world.requests("mta-sts.enforce.example") == 0  # nothing looked up


# -- errors: unknown routes, methods, sizes -------------------------------------------------------------------------


async def test_unknown_routes_are_404_json(api: Api) -> None:
    for path in ("/", "/v1", "/v1/policy/", "/v1/policy/a/b", "/v2/policy/enforce.example", "/v1/verdict/x"):
        status, answer, _ = await api.get(path, headers={"Accept": "text/html"})
        assert status == 404, path
        assert answer["error"].startswith("no such route: ")


async def test_wrong_methods_are_405_json(api: Api) -> None:
    status, answer, headers = await api.request("POST", "/v1/policy/enforce.example", b"{}")
    assert (status, headers["Allow"]) == (405, "GET,HEAD")
    assert "does not take POST" in answer["error"]
    status, answer, headers = await api.request("GET", "/v1/verdict")
    assert (status, headers["Allow"]) == (405, "POST")
    status, answer, headers = await api.request("DELETE", "/v1/openapi.json")
    assert status == 405


async def test_oversize_bodies_are_413_json(world: World, api: Api) -> None:
    big = json.dumps({"domain": "enforce.example", "mx_host": "mx.example.com", "x": "a" * 5000}).encode()
    status, answer = await api.verdict(big)
    assert status == 413
    assert answer == {"error": "the request body is larger than 4096 bytes"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b" " * 1000

    status, answer, _ = await api.request("POST", "/v1/verdict", chunks())  # type: ignore[arg-type]
    assert status == 413
    request = b'{"domain": "enforce.example", "mx_host": "mx.example.com"}'
    status, answer = await api.verdict(b" " * (4097 - len(request)) + request)
    assert status == 413
    status, answer = await api.verdict(b" " * (4096 - len(request)) + request)
    assert (status, answer["deliver"]) == (200, True)  # the limit is inclusive


async def test_a_body_that_does_not_arrive_is_408_json(resolver: PolicyResolver) -> None:
    async with HttpApiServer(resolver, port=0, request_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /v1/verdict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            assert await reader.read() == b""  # then closed (after a second for the rest of the body)
        writer.close()
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"application/json" in head
        assert json.loads(body) == {"error": "the request body did not arrive within 0.2 s"}
        assert server.timeouts == 1


async def test_an_internal_error_is_500_json(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(lookup: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("mtasts.http_api.server.policy_answer", broken)
    with caplog.at_level(logging.ERROR, logger="mtasts.http_api"):
        status, answer, _ = await api.get("/v1/policy/enforce.example", headers={"Accept": "text/html"})
    assert (status, answer) == (500, {"error": "internal error (logged): treat it as temporary"})
    assert any(record.exc_info and "a bug" in str(record.exc_info[1]) for record in caplog.records)
    assert api.server.errors == 1


# -- THE ONE RULE: what fails on our side is never "no policy" -------------------------------------------------


async def test_a_lookup_outlasting_the_request_timeout_is_503_never_no_policy(
    world: World, resolver: PolicyResolver
) -> None:
    async with HttpApiServer(resolver, port=0, request_timeout=0.2) as server, aiohttp.ClientSession() as session:
        api = Api(session, server)
        status, answer, headers = await api.get("/v1/policy/slow.example")
        assert (status, headers["Retry-After"]) == (503, "5")
        assert answer == {"error": "the policy lookup for slow.example is still running after 0.2 s: try again later"}
        status, answer = await api.verdict({"domain": "slow2.example", "mx_host": "evil.example"})
        assert status == 503
        assert "deliver" not in answer
        assert server.timeouts == 2
        for _ in range(50):  # the shared lookup was not cancelled: it completes and fills the cache
            if resolver.cached_policy("slow.example") == parse_policy(ENFORCE):
                break
            await asyncio.sleep(0.05)
        status, answer = await api.policy("slow.example")
        assert (status, answer["mode"], answer["from_cache"]) == (200, "enforce", True)
        document = await (await session.get(server.url + "/v1/openapi.json")).json()
        for seen in api.seen:
            validate(document, *seen)
    assert world.requests("mta-sts.slow.example") == 1


async def test_a_local_fault_is_503_with_its_status_never_no_policy(api: Api, resolver: PolicyResolver) -> None:
    status, answer = await api.policy("enforce.example")
    assert status == 200
    await resolver.aclose()  # the daemon is shutting down: new lookups are a local fault
    status, answer, headers = await api.get("/v1/policy/d1.example")
    assert (status, headers["Retry-After"]) == (503, "5")
    assert (answer["status"], answer["defer"], answer["mode"]) == ("local-error", True, None)
    assert answer["detail"] == "the resolver is closed"
    assert answer["error"] == "the policy lookup for d1.example failed on this host: try again later"
    status, verdict = await api.verdict({"domain": "d1.example", "mx_host": "evil.example"})
    assert status == 503
    assert {k: verdict[k] for k in ("status", "deliver", "require_tls", "defer", "mode")} == {
        "status": "local-error",
        "deliver": False,
        "require_tls": True,
        "defer": True,
        "mode": None,
    }
    status, answer = await api.policy("enforce.example")  # still serving what memory holds
    assert (status, answer["mode"]) == (200, "enforce")
    assert api.server.deferred == 2


async def test_a_bug_inside_a_lookup_is_503_local_error(
    api: Api, resolver: PolicyResolver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(key: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(resolver, "_check_txt", broken)
    with caplog.at_level(logging.ERROR, logger="mtasts"):
        status, answer = await api.verdict({"domain": "d1.example", "mx_host": "mx.d1.example"})
    assert (status, answer["status"], answer["deliver"], answer["defer"]) == (503, "local-error", False, True)


async def test_a_lookup_that_raises_is_503(
    api: Api, resolver: PolicyResolver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(domain: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(resolver, "lookup", broken)
    with caplog.at_level(logging.ERROR, logger="mtasts.http_api"):
        status, answer = await api.verdict({"domain": "enforce.example", "mx_host": "mx.example.com"})
    assert status == 503
    assert answer == {"error": "the policy lookup for enforce.example failed on this host: try again later"}
    assert api.server.errors == 1


async def test_dns_errors_follow_dns_error(world: World, clock: FakeClock) -> None:
    """RFC 8461 behaviour by default (a failed TXT query with nothing cached: as without a policy, status says
    dns-error); with ``dns_error = "defer"``: 503, deliver false."""
    for mode in ("no-policy", "defer"):
        async with (
            world.policy_resolver(clock=clock, store=MemoryStore(), dns_error=mode) as resolver,
            HttpApiServer(resolver, port=0) as server,
            aiohttp.ClientSession() as session,
        ):
            api = Api(session, server)
            status, answer = await api.policy("servfail.example")
            assert (answer["status"], answer["mode"], answer["result_type"]) == ("dns-error", None, None)
            status_v, verdict = await api.verdict({"domain": "servfail.example", "mx_host": "evil.example"})
            if mode == "no-policy":
                assert (status, answer["defer"], status_v, verdict["deliver"]) == (200, False, 200, True)
            else:
                assert (status, answer["defer"], status_v, verdict["deliver"]) == (503, True, 503, False)
                assert "dns_error = defer" in verdict["error"]
            document = await (await session.get(server.url + "/v1/openapi.json")).json()
            for seen in api.seen:
                validate(document, *seen)


# -- the OpenAPI document -------------------------------------------------------------------------------------


async def test_the_openapi_document_is_served(api: Api) -> None:
    status, document, _ = await api.get("/v1/openapi.json")
    assert status == 200
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1.")
    assert set(document["paths"]) == {"/v1/policy/{domain}", "/v1/verdict", "/v1/openapi.json"}
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    policy = document["components"]["schemas"]["Policy"]
    # the fields the API contract fixes (../shared/api.md, "Beyond Postfix")
    assert {"domain", "status", "mode", "mx", "max_age", "id", "fetched_at", "expires_at", "result_type"} <= set(
        policy["required"]
    )
    verdict = document["components"]["schemas"]["Verdict"]
    assert {"deliver", "require_tls", "result_type", "mode"} <= set(verdict["required"])
    assert document["components"]["schemas"]["VerdictRequest"]["properties"]["tls_failure"]["enum"] == [
        *TLS_FAILURES,
        None,
    ]
    assert policy["properties"]["status"]["enum"] == [str(s) for s in LookupStatus]


def test_the_schemas_refuse_what_the_api_must_not_send() -> None:
    """The fixture's validation is not vacuous: a missing or extra field, a wrong type, a 503 or 400 without
    ``error`` all fail."""
    document = openapi_document()
    good = {"domain": "a.example", "status": "no-policy", "mode": None, "mx": None, "max_age": None, "id": None,
            "fetched_at": None, "expires_at": None, "result_type": None, "from_cache": False, "defer": False,
            "detail": None}  # fmt: skip
    validate(document, "/v1/policy/{domain}", "GET", 200, good)
    for bad in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "mode"}, {**good, "mode": "Enforce"},
                {**good, "max_age": "1"}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            validate(document, "/v1/policy/{domain}", "GET", 200, bad)
    with pytest.raises(jsonschema.ValidationError):
        validate(document, "/v1/policy/{domain}", "GET", 503, {**good, "defer": True})
    validate(document, "/v1/policy/{domain}", "GET", 503, {**good, "defer": True, "error": "later"})
    with pytest.raises(jsonschema.ValidationError):
        validate(document, "/v1/verdict", "POST", 400, {"error": "x", "detail": "y"})


def test_the_docs_describe_every_field_and_route() -> None:
    text = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    document = openapi_document()
    for path in document["paths"]:
        assert path in text, path
    for name in ("Policy", "Verdict", "VerdictRequest"):
        for field in document["components"]["schemas"][name]["properties"]:
            assert f"`{field}`" in text, f"{name}.{field} is not in docs/http-api.md"
    for status in ("400", "404", "405", "408", "413", "500", "503"):
        assert f"| {status} " in text, status
    assert "mtasts serve-http" in text
    assert "curl" in text


# -- the pure parts ---------------------------------------------------------------------------------------------


def test_rfc3339() -> None:
    assert rfc3339(None) is None
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_800_000_000.9) == "2027-01-15T08:00:00Z"
    assert rfc3339(1e20) is None  # out of range: no time rather than an error
    parsed = datetime.datetime.fromisoformat(rfc3339(1_800_000_000) or "")
    assert parsed.timestamp() == 1_800_000_000


def test_parse_verdict_request() -> None:
    assert parse_verdict_request(b'{"domain": "B\\u00fccher.Example.", "mx_host": "MX.example.com"}') == (
        VerdictRequest("xn--bcher-kva.example", "mx.example.com", None)
    )
    for failure in TLS_FAILURES:
        body = json.dumps({"domain": "a.example", "mx_host": "mx.a.example", "tls_failure": failure}).encode()
        assert parse_verdict_request(body).tls_failure == failure
    with pytest.raises(UsageError, match="unknown fields"):
        parse_verdict_request(b'{"domain": "a.example", "mx_host": "b.example", "x": 1, "y": 2}')


def test_the_answer_modules_are_pure() -> None:
    forbidden = {"asyncio", "aiohttp", "socket", "ssl", "dns", "time", "select", "selectors"}
    for name in ("answers", "openapi"):
        imported = absolute_imports(ROOT / "mtasts" / "http_api" / f"{name}.py")
        assert not imported & forbidden, name
    code = "import sys, mtasts.http_api as h; h.openapi_document(); print('aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1") == ("127.0.0.1", 8462)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(UsageError, match="--listen"):
        parse_listen("a:b:c")


# -- the daemon: in process, and as `mtasts serve-http` --------------------------------------------------------


async def test_serve_http_until_stopped(world: World) -> None:
    stop = asyncio.Event()
    started: asyncio.Future[HttpApiServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_http(world_config(world), listen=("127.0.0.1", 0), ready=started.set_result,
                                          stop=stop))  # fmt: skip
    server = await asyncio.wait_for(asyncio.shield(started), 5)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/v1/policy/enforce.example") as response:
            assert (response.status, (await response.json())["mode"]) == (200, "enforce")
        stop.set()
        await asyncio.wait_for(task, 10)
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{server.url}/v1/policy/enforce.example")


async def test_serve_http_reports_an_address_in_use(world: World, server: HttpApiServer) -> None:
    with pytest.raises(MTASTSError, match=r"cannot listen on 127\.0\.0\.1:"):
        await serve_http(world_config(world), listen=("127.0.0.1", server.port), stop=asyncio.Event())


async def test_the_command_serves_until_sigterm(world: World, tmp_path: Path) -> None:
    """``python -m mtasts serve-http`` with the socketmap's TOML file: its world keys apply, its listen does not."""
    config = tmp_path / "mtasts.toml"
    config.write_text(
        'listen = "127.0.0.1:1"\n'  # the socketmap's listener: not read by serve-http
        'store = "memory"\n'
        f'nameserver = "{world.host}:{world.dns_port}"\n'
        f'cafile = "{world.ca_pem_path}"\n'
        f"policy_port = {world.https_port}\n"
        "request_timeout = 10\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtasts", "serve-http", "--listen", "127.0.0.1:0", "--config", str(config),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert process.stderr is not None
    try:
        url = None
        async with asyncio.timeout(20):
            while url is None:
                line = (await process.stderr.readline()).decode()
                assert line, "serve-http exited before listening"
                found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
                url = found.group(1) if found else None
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/policy/enforce.example") as response:
                answer = await response.json()
                assert (response.status, answer["mode"], answer["id"]) == (200, "enforce", "20261201")
            verdict = {"domain": "enforce.example", "mx_host": "x.example"}
            async with session.post(f"{url}/v1/verdict", json=verdict) as response:
                assert (response.status, (await response.json())["deliver"]) == (200, False)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = await process.stderr.read()
            assert await process.wait() == 0
        assert b"shutting down (2 requests" in rest
    finally:
        await stop_process(process)


def test_the_command_refuses_bad_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mtasts.cli import main

    assert main(["serve-http", "--listen", "a:b:c"]) == 2
    assert "--listen address" in capsys.readouterr().err
    path = tmp_path / "mtasts.toml"
    path.write_text("zones = {}\n")
    assert main(["serve-http", "--config", str(path)]) == 2
    assert "unknown key" in capsys.readouterr().err
    with contextlib.suppress(SystemExit):
        main(["serve-http", "--help"])
    assert "--listen HOST:PORT" in capsys.readouterr().out


async def test_an_override_policy_none_applies_without_any_lookup(
    world: World, resolver: PolicyResolver, caplog: pytest.LogCaptureFixture
) -> None:
    """The socketmap's TOML ``[overrides."D"] policy = "none"`` applies here too: the domain is answered as without
    MTA-STS (``not-applicable``, the override named in ``detail``), with no TXT query or fetch, every use logged;
    an ``answer`` override (a Postfix reply) does not apply to the HTTP API."""
    from mtasts.socketmap import Override

    overrides = {"Enforce.Example": Override.no_policy(), "testing.example": Override.fixed("OK encrypt")}
    async with HttpApiServer(resolver, port=0, overrides=overrides) as server, aiohttp.ClientSession() as session:
        api = Api(session, server)
        with caplog.at_level(logging.WARNING, logger="mtasts"):
            status, answer = await api.policy("enforce.example")
            assert status == 200
            assert (answer["status"], answer["mode"], answer["defer"]) == ("not-applicable", None, False)
            assert "override" in answer["detail"]
            status, verdict = await api.verdict({"domain": "enforce.example", "mx_host": "mx.elsewhere.example"})
            assert status == 200 and verdict["deliver"] is True and verdict["require_tls"] is False
        assert world.queries("_mta-sts.enforce.example") == 0 and world.requests("mta-sts.enforce.example") == 0
        assert [r.message for r in caplog.records if "override for" in r.message] == [
            "override for enforce.example: policy = none, answered as without MTA-STS"
        ] * 2
        status, testing = await api.policy("testing.example")  # the answer override is the socketmap's
        assert status == 200 and testing["mode"] == "testing"
        async with session.get(server.url + "/v1/openapi.json") as response:
            document = await response.json()
        for seen in api.seen:
            validate(document, *seen)
