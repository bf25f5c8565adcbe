"""Per-domain overrides (TOML ``[overrides."example.com"]``): parsing, and the server answering them first —
before the cache, a lookup and DANE — over real sockets against the loopback world."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mtasts import PolicyResolver
from mtasts.errors import UsageError
from mtasts.socketmap import ServerConfig, SocketmapServer, load_config
from mtasts.socketmap.overrides import Override, check_answer, parse_overrides
from mtasts.testing import World

from .conftest import FakeClock
from .test_socketmap import Client
from .test_socketmap_dane import dane_domain

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.enforce.example\nmax_age: 86400\n"
SECURE = b"OK secure match=mx.enforce.example servername=hostname"
PINNED = "OK secure match=mx1.enforce.example"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE)
        w.publish("other.example", ENFORCE.replace("enforce", "other"))
        dane_domain(w, "dane.example", tlsa_hosts=2)
        yield w


# -- parsing ------------------------------------------------------------------------------------------------------


def test_the_overrides_table(tmp_path: Path) -> None:
    path = tmp_path / "socketmap.toml"
    path.write_text(
        '[overrides."Broken.Example."]\npolicy = "none"\n'
        '[overrides."bücher.example"]\nanswer = "OK encrypt"\n'
        '[overrides."pinned.example"]\nanswer = "OK secure match=mx1.pinned.example"\n'
        '[overrides."later.example"]\nanswer = "TEMP not today"\n'
        '[overrides."gone.example"]\nanswer = "NOTFOUND"\n'
    )
    overrides = load_config(path).overrides
    assert overrides == {
        "broken.example": Override.no_policy(),
        "xn--bcher-kva.example": Override.fixed("OK encrypt"),
        "pinned.example": Override.fixed("OK secure match=mx1.pinned.example"),
        "later.example": Override.fixed("TEMP not today"),
        "gone.example": Override.fixed("NOTFOUND "),
    }
    assert overrides["broken.example"].netstring == b"9:NOTFOUND ,"
    assert overrides["gone.example"].reply == "NOTFOUND "
    assert ServerConfig().overrides == {}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"a.example": {"policy": "enforce"}}, "override for 'a.example': policy must be \"none\""),
        ({"a.example": {"answer": "YES"}}, "override for 'a.example': an answer must start with OK, NOTFOUND"),
        ({"a.example": {"answer": "OK"}}, "override for 'a.example': an OK answer must name a Postfix TLS level"),
        ({"a.example": {"answer": "OK secur"}}, "an OK answer must name a Postfix TLS level"),
        ({"a.example": {"answer": "OK may\nPERM x"}}, "printable ASCII on one line"),
        ({"a.example": {"answer": "OK may " + "x" * 100_000}}, "at most 100000 characters"),
        ({"a.example": {"answer": "NOTFOUND x"}}, "NOTFOUND takes nothing after it"),
        ({"a.example": {"answer": 1}}, "must be a string"),
        ({"a.example": {"policy": "none", "answer": "OK may"}}, "exactly one of"),
        ({"a.example": {"mode": "none"}}, "unknown: mode"),
        ({"a.example": {}}, "exactly one of"),
        ({"a.example": "none"}, "must be a table"),
        ({"a_b.example": {"policy": "none"}}, "override for 'a_b.example': not a valid host name"),
        ({"a.example": {"policy": "none"}, "A.example.": {"policy": "none"}}, "a.example has an override already"),
    ],
)
def test_a_bad_override_is_a_usage_error_naming_the_domain(table: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=_escaped(message)):
        parse_overrides(table)


def test_a_bad_override_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "socketmap.toml"
    path.write_text('[overrides."a.example"]\nanswer = "OK sometimes"\n')
    with pytest.raises(UsageError, match=f"{_escaped(str(path))}: override for 'a.example'"):
        load_config(path)
    path.write_text('overrides = "none"\n')
    with pytest.raises(UsageError, match="overrides must be a table"):
        load_config(path)


def test_every_postfix_reply_kind_is_accepted() -> None:
    for reply in ["OK dane-only", "OK verify match=.example.net", "TEMP maintenance", "PERM no", "NOTFOUND "]:
        assert check_answer(reply) == reply


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


# -- answering ------------------------------------------------------------------------------------------------------


async def test_an_override_wins_over_a_cached_enforce_policy(world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        client = await Client.connect(server)
        assert await client.ask("enforce.example") == SECURE  # discovered and cached
        server.set_overrides({"enforce.example": Override.no_policy(), "other.example": Override.fixed(PINNED)})
        for key in ["enforce.example", "ENFORCE.example.", "[enforce.example]:25", "enforce.example:25"]:
            assert await client.ask(key) == b"NOTFOUND ", key
        assert await client.ask("other.example") == PINNED.encode()  # never cached: answered without a lookup
        assert await server.answer(b"QUERYwithTLSRPT other.example") == PINNED.encode()  # as it is, on every name
        assert await client.ask(".enforce.example") == b"NOTFOUND "  # a parent-domain lookup is no override use
        assert server.overrides_used == {"none": 4, "answer": 2}
        server.set_overrides({})  # removed: discovery answers again, from the cache
        assert await client.ask("enforce.example") == SECURE
        assert server._cached_policy is resolver.cached_policy  # and the hit path is the plain one again
        assert server.overrides_used == {"none": 4, "answer": 2}  # counts go on
        await client.close()
    assert world.requests("mta-sts.enforce.example") == 1
    assert world.requests("mta-sts.other.example") == 0


async def test_a_spelling_seen_before_is_looked_at_again_after_new_overrides(resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        server.set_overrides({"other.example": Override.no_policy()})
        assert await server.answer(b"postfix Enforce.Example") == SECURE  # remembered: not overridden
        server.set_overrides({"enforce.example": Override.fixed("OK encrypt")})
        assert await server.answer(b"postfix Enforce.Example") == b"OK encrypt"


async def test_on_the_exim_map_only_policy_none_applies(resolver: PolicyResolver) -> None:
    """``policy = "none"`` is "no policy" for Exim too; an ``answer`` is a Postfix reply, not Exim's."""
    async with SocketmapServer(resolver, port=0) as server:
        usual = await server.answer(b"exim other.example")
        assert usual != b"OK encrypt"
        server.set_overrides({"enforce.example": Override.no_policy(), "other.example": Override.fixed("OK encrypt")})
        assert await server.answer(b"exim enforce.example") == b"NOTFOUND "
        assert await server.answer(b"exim other.example") == usual
        assert server.overrides_used == {"none": 1, "answer": 0}


async def test_overrides_from_the_constructor_and_tlsrpt_on_every_name(resolver: PolicyResolver) -> None:
    overrides = {"Enforce.Example": Override.fixed("OK encrypt")}
    async with SocketmapServer(resolver, port=0, tlsrpt=True, overrides=overrides) as server:
        assert server.overrides == {"enforce.example": Override.fixed("OK encrypt")}
        for _ in range(3):  # the memoised reply, and the uses still counted
            assert await server.answer(b"postfix enforce.example") == b"OK encrypt"
            assert await server.answer(b"QUERYwithTLSRPT enforce.example") == b"OK encrypt"
        assert server.overrides_used == {"none": 0, "answer": 6}


async def test_an_override_wins_over_dane(world: World, clock: FakeClock) -> None:
    async with (
        world.policy_resolver(clock=clock, fetch_timeout=5) as resolver,
        SocketmapServer(resolver, port=0, dane=True) as server,
    ):
        assert await server.answer(b"postfix dane.example") == b"OK dane-only"
        server.set_overrides({"dane.example": Override.fixed("OK secure match=.dane.example")})
        assert await server.answer(b"postfix dane.example") == b"OK secure match=.dane.example"
        server.set_overrides({"dane.example": Override.no_policy()})
        assert await server.answer(b"postfix dane.example") == b"NOTFOUND "
        assert await server.answer(b"QUERYwithTLSRPT dane.example") == b"NOTFOUND "
        server.set_overrides({})
        assert await server.answer(b"postfix dane.example") == b"OK dane-only"


async def test_every_override_use_is_logged(resolver: PolicyResolver, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 17: "logged on every use" — each request a ``policy = "none"`` override answers is a WARNING (a
    delivery without MTA-STS), each fixed answer an INFO line; both with structured fields for JSON logs."""
    async with SocketmapServer(resolver, port=0) as server:
        server.set_overrides({"enforce.example": Override.no_policy(), "other.example": Override.fixed("OK may")})
        with caplog.at_level(logging.INFO, logger="mtasts"):
            for _ in range(3):
                await server.answer(b"postfix enforce.example")
                await server.answer(b"postfix other.example")
            await server.answer(b"postfix Enforce.Example")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "override for" in r.message]
        assert [r.message for r in warnings] == [
            "override for enforce.example: policy = none, answered NOTFOUND (MTA-STS not applied)"
        ] * 4
        assert {(r.__dict__["event"], r.__dict__["domain"]) for r in warnings} == {("override", "enforce.example")}
        infos = [r.message for r in caplog.records if r.levelno == logging.INFO and "override for" in r.message]
        assert infos == ["override for other.example: answered 'OK may'"] * 3
        assert server.overrides_used == {"none": 4, "answer": 3}


async def test_a_failing_override_answers_temp_never_notfound(resolver: PolicyResolver) -> None:
    """A fault in the override path (here its counters, broken) is an internal error: TEMP, not the override's
    NOTFOUND."""
    async with SocketmapServer(resolver, port=0) as server:
        assert await server.answer(b"postfix enforce.example") == SECURE
        server.set_overrides({"enforce.example": Override.no_policy()})
        assert server._overrides is not None
        server._overrides.used = {}  # a bug: counting the use raises KeyError
        assert await server.answer(b"postfix enforce.example") == b"TEMP internal error"
        assert server.errors == 1


async def test_set_overrides_checks_its_keys(resolver: PolicyResolver) -> None:
    server = SocketmapServer(resolver, port=0)
    with pytest.raises(UsageError, match="not a valid host name"):
        server.set_overrides({"not a domain": Override.no_policy()})
    with pytest.raises(UsageError, match="must be an Override"):
        server.set_overrides({"a.example": "NOTFOUND "})  # type: ignore[dict-item]
    server.set_overrides({})
    assert server._overrides is None  # none set, none ever: the class default, nothing on the hit path
