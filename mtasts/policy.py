"""The MTA-STS policy file (RFC 8461 §3.2): :func:`parse_policy`, :class:`Policy`, :class:`Mode`.

The grammar, and every place mtasts bends it, is in :mod:`mtasts._abnf` (decisions table in
``docs/decisions.md``). In short: LF or CRLF terminators (erratum 6253), trailing WSP allowed, no WSP before
``:`` or at the start of a line, keys and values case-sensitive, the first of duplicated fields wins (§3.2),
unknown keys kept as extensions, ``mx`` required unless ``mode: none``, ``max_age`` 1–10 digits, clamped to
31557600, A-labels only in ``mx``; blank lines and one leading BOM tolerated, one trailing dot on ``mx``
stripped. Anything else off the grammar makes the whole policy invalid (:class:`PolicyError`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

from . import _abnf
from .errors import DomainError, PolicyError
from .matching import host_key, is_label

__all__ = ["MAX_MAX_AGE", "Mode", "Policy", "parse_policy"]

#: §3.2 "max_age": "maximum value of 31557600" (one year). Larger values are clamped (decisions table).
MAX_MAX_AGE = 31_557_600

_VERSION = "STSv1"
_KNOWN_KEYS = frozenset({"version", "mode", "mx", "max_age"})
_NO_EXTENSIONS: Mapping[str, str] = MappingProxyType({})
_BOM = "\ufeff"


class Mode(enum.StrEnum):
    """§3.2 "mode": what a sending MTA does when validation fails (§5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


def normalize_mx_pattern(value: str) -> str:
    """Validate one ``mx`` value (``["*."] Domain``, RFC 5321 §4.1.2) and return it lowercased.

    One trailing dot is stripped (decisions table). Raises :class:`PolicyError` for anything else off the
    grammar: U-labels (§3.2 MUST use A-labels), ``*.*.x``, ``mail*.x``, underscores, an all-digit last label
    (an IP address is not an MX name), labels over 63 or names over 253 characters.
    """
    if not isinstance(value, str):
        raise PolicyError(f"an mx pattern must be a str, not {type(value).__name__}")
    pattern = value[:-1] if value.endswith(".") else value
    if not pattern.isascii():
        raise PolicyError(f"mx {value!r} is not in A-labels (RFC 8461 §3.2: use the Punycode A-label)")
    if _abnf.sts_policy_mx_value.fullmatch(pattern) is None:
        raise PolicyError(f"mx {value!r} is not a host name or a '*.' wildcard pattern (RFC 8461 §3.2)")
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.split(".")
    if len(name) > _abnf.MAX_NAME_LENGTH or any(len(label) > _abnf.MAX_LABEL_LENGTH for label in labels):
        raise PolicyError(f"mx {value[:80]!r} exceeds the DNS length limits")
    if labels[-1].isdigit():
        raise PolicyError(f"mx {value!r} looks like an IP address; an mx pattern is a host name")
    return pattern.lower()


# -- the field rules: one definition each, shared by parse_policy (text) and Policy(...) (values) -------------


def _version(value: object) -> str:
    """§3.2 ``sts-policy-version``: exactly "STSv1"."""
    if value != _VERSION:
        shown = value[:40] if isinstance(value, str) else value
        raise PolicyError(f"unsupported version {shown!r}: only {_VERSION!r} (RFC 8461 §3.2)")
    return _VERSION


def _mode(value: object) -> Mode:
    """§3.2 ``sts-policy-mode``: enforce, testing or none (case-sensitive)."""
    if value not in ("enforce", "testing", "none"):
        shown = value[:40] if isinstance(value, str) else value
        raise PolicyError(f"invalid mode {shown!r}: enforce, testing or none (RFC 8461 §3.2)")
    return Mode(value)


def _max_age(value: object) -> int:
    """§3.2 ``sts-policy-max-age``: a non-negative number of seconds, clamped to :data:`MAX_MAX_AGE` (C6)."""
    if isinstance(value, str):
        if _abnf.sts_policy_max_age_value.fullmatch(value) is None:
            raise PolicyError(f"invalid max_age {value[:40]!r}: 1 to 10 digits (RFC 8461 §3.2)")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError(f"max_age must be a non-negative integer, not {value!r}")
    return min(value, MAX_MAX_AGE)


def _extension_value(name: str, value: object) -> str:
    """§3.2 ``sts-policy-ext-value`` (also what a later duplicate of a known field must be)."""
    if not isinstance(value, str) or _abnf.sts_policy_ext_value.fullmatch(value) is None:
        shown = value[:80] if isinstance(value, str) else value
        raise PolicyError(f"invalid value for {name!r}: {shown!r} (RFC 8461 §3.2 sts-policy-ext-value)")
    return value


def _check_extension(name: str, value: object) -> None:
    if not isinstance(name, str) or _abnf.sts_policy_ext_name.fullmatch(name) is None:
        raise PolicyError(f"invalid extension name {name!r} (RFC 8461 §3.2 sts-policy-ext-name)")
    if name in _KNOWN_KEYS:
        raise PolicyError(f"{name!r} is a policy field, not an extension")
    _extension_value(name, value)


def _needs_mx(mode: Mode, mx: tuple[str, ...]) -> None:
    """§3.2: ``mx`` is required unless ``mode: none``."""
    if not mx and mode is not Mode.NONE:
        raise PolicyError(f"mode {mode.value} needs at least one mx field (RFC 8461 §3.2)")


class Policy:
    """An MTA-STS policy (RFC 8461 §3.2): immutable, hashable, compact.

    Its fields cannot be set or deleted; the one mutable slot, :attr:`verdict_memo`, only caches verdicts
    derived from them (a pure function of an immutable value: like :func:`functools.cached_property`).

    ``Policy(mode, mx, max_age)`` validates its arguments like :func:`parse_policy` does (raising
    :class:`PolicyError`), so a policy built by hand is one a receiver may publish: see :meth:`to_text`.
    """

    __slots__ = (
        "__weakref__",
        "_exact",
        "_hash",
        "_wildcards",
        "extensions",
        "max_age",
        "mode",
        "mx",
        "verdict_memo",
        "version",
    )

    version: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    extensions: Mapping[str, str]
    _exact: frozenset[str]
    _wildcards: frozenset[str]
    _hash: int
    #: :func:`mtasts.evaluate`'s memo, owned by it: MX host -> its Verdict for a validated session (bounded: a
    #: policy's MX hosts are few). Derived from the immutable fields — never part of equality, hash or pickling.
    verdict_memo: dict[str, object]

    def __init__(
        self,
        mode: Mode | str,
        mx: Iterable[str],
        max_age: int,
        extensions: Mapping[str, str] | None = None,
        version: str = _VERSION,
    ) -> None:
        _version(version)
        checked_mode = _mode(mode)
        if isinstance(mx, str):
            raise PolicyError("mx must be a sequence of patterns, not a single str")
        patterns = tuple(normalize_mx_pattern(pattern) for pattern in mx)
        _needs_mx(checked_mode, patterns)
        if isinstance(max_age, str):  # a value, not its text: Policy(..., max_age="60") is a caller's slip
            raise PolicyError(f"max_age must be a non-negative integer, not {max_age!r}")
        ext = dict(extensions or {})
        for name, value in ext.items():
            _check_extension(name, value)
        self._init(_VERSION, checked_mode, patterns, _max_age(max_age), ext)

    def _init(self, version: str, mode: Mode, mx: tuple[str, ...], max_age: int, ext: dict[str, str]) -> None:
        extensions = MappingProxyType(ext) if ext else _NO_EXTENSIONS
        setattr_ = object.__setattr__
        setattr_(self, "version", version)
        setattr_(self, "mode", mode)
        setattr_(self, "mx", mx)
        setattr_(self, "max_age", max_age)
        setattr_(self, "extensions", extensions)
        setattr_(self, "_exact", frozenset(p for p in mx if not p.startswith("*.")))
        setattr_(self, "_wildcards", frozenset(p[2:] for p in mx if p.startswith("*.")))
        setattr_(self, "_hash", hash((mode, mx, max_age, frozenset(extensions.items()))))
        setattr_(self, "verdict_memo", {})

    @classmethod
    def _from_valid(cls, mode: Mode, mx: tuple[str, ...], max_age: int, extensions: dict[str, str]) -> Policy:
        """Build from values the parser has already validated (skips re-validation)."""
        policy = cls.__new__(cls)
        policy._init(_VERSION, mode, mx, max_age, extensions)
        return policy

    # -- immutability, equality, hashing ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Policy is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Policy is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Policy):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.mode is other.mode
            and self.mx == other.mx
            and self.max_age == other.max_age
            and self.extensions == other.extensions
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        ext = f", extensions={dict(self.extensions)!r}" if self.extensions else ""
        return f"Policy(mode={self.mode.value!r}, mx={self.mx!r}, max_age={self.max_age}{ext})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.mode, self.mx, self.max_age, dict(self.extensions), self.version))

    # -- behaviour -------------------------------------------------------------------------------------------

    def matches(self, host: str) -> bool:
        """Does any ``mx`` pattern match the MX host ``host`` (RFC 8461 §4.1)? See :func:`mx_matches`."""
        # The hot path of every verdict: ASCII host names are handled inline (measured: benchmarks/).
        if type(host) is str and host.isascii():
            key = host.lower()
            if key.endswith("."):
                key = key[:-1]
        elif isinstance(host, str):
            try:
                key = host_key(host)
            except DomainError:
                return False
        else:
            return False
        if key in self._exact:
            return True
        if self._wildcards:
            first, dot, rest = key.partition(".")
            # "*." stands for exactly one whole, valid label (§4.1): never empty, never "a.b", never "*".
            if dot and rest in self._wildcards and len(first) <= _abnf.MAX_LABEL_LENGTH:
                return first.isalnum() or is_label(first)  # key is ASCII here: isalnum() is [A-Za-z0-9]
        return False

    def lines(self) -> list[str]:
        """The policy's fields as lines without terminators (also TLS-RPT's ``policy-string``, RFC 8460 §4.5)."""
        lines = [f"version: {self.version}", f"mode: {self.mode.value}"]
        lines.extend(f"mx: {pattern}" for pattern in self.mx)
        lines.append(f"max_age: {self.max_age}")
        lines.extend(f"{name}: {value}" for name, value in self.extensions.items())
        return lines

    def to_text(self, newline: str = "\n") -> str:
        """Render the policy as a file that :func:`parse_policy` reads back equal (for publishers).

        ``newline`` is ``"\\n"`` or ``"\\r\\n"`` (§3.2 ``sts-policy-term``).
        """
        if newline not in ("\n", "\r\n"):
            raise PolicyError("newline must be LF or CRLF (RFC 8461 §3.2 sts-policy-term)")
        return newline.join(self.lines()) + newline


def _decode(body: str | bytes) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            return raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"the policy is not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(body, str):
        raise PolicyError(f"a policy must be str or bytes, not {type(body).__name__}")
    return body[1:] if body.startswith(_BOM) else body


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Split on ``LF`` / ``CRLF`` (§3.2 ``sts-policy-term``); a bare CR is an error — also at the very end of the
    body, where no LF follows it (``max_age: 60\\r``): only ``CR LF`` is a terminator."""
    pieces = text.split("\n")
    last = len(pieces)
    for number, raw in enumerate(pieces, start=1):
        line = raw[:-1] if raw.endswith("\r") and number < last else raw
        if "\r" in line:
            raise PolicyError("bare CR: lines end with LF or CRLF (RFC 8461 §3.2)", line=number)
        yield number, line


def parse_policy(body: str | bytes) -> Policy:
    """Parse a policy file (RFC 8461 §3.2); raise :class:`PolicyError` (``sts-policy-invalid``) if invalid.

    ``body`` is the HTTP response body, as bytes (decoded as strict UTF-8) or already as text.
    """
    text = _decode(body)
    version: str | None = None
    mode: Mode | None = None
    max_age: int | None = None
    mx: list[str] = []
    extensions: dict[str, str] = {}
    for number, line in _lines(text):
        if not line.strip(" \t"):
            continue  # blank and whitespace-only lines are tolerated (decisions table, C12)
        start = _abnf.sts_policy_field_start.match(line)
        if start is None:
            raise PolicyError(f"not a 'key: value' field: {line[:80]!r}", line=number)
        name = start.group(1)
        value = line[start.end() :].rstrip(" \t")
        try:
            if name == "mx":  # the one repeated field: every line counts, every line must be valid
                mx.append(normalize_mx_pattern(value))
            elif name == "version" and version is None:
                version = _version(value)
            elif name == "mode" and mode is None:
                mode = _mode(value)
            elif name == "max_age" and max_age is None:
                max_age = _max_age(value)
            else:
                # An extension, or a later duplicate of a known field (ignored, §3.2): either way the line must be
                # a syntactically valid field.
                _extension_value(name, value)
                if name not in _KNOWN_KEYS:
                    extensions.setdefault(name, value)
        except PolicyError as exc:
            raise PolicyError(exc.message, line=number) from None
    if version is None:
        raise PolicyError("the policy has no version field (RFC 8461 §3.2)")
    if mode is None:
        raise PolicyError("the policy has no mode field (RFC 8461 §3.2)")
    if max_age is None:
        raise PolicyError("the policy has no max_age field (RFC 8461 §3.2)")
    _needs_mx(mode, tuple(mx))
    return Policy._from_valid(mode, tuple(mx), max_age, extensions)
