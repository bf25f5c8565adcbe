"""Postfix 3.10's TLS-RPT attributes in the socketmap answers (TLSRPT_README, "MTA-STS Support via
smtp_tls_policy_maps"), and ``fetch_idle_timeout``: real sockets, a loopback World, Postfix's own ``postmap``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mtasts import PolicyResolver, parse_policy
from mtasts.errors import MTASTSError
from mtasts.netstring import NetstringDecoder, encode
from mtasts.socketmap import ServerConfig, SocketmapServer, format_tlsrpt, load_config, serve
from mtasts.testing import World

from .test_postfix import postfix_config, postmap  # noqa: F401 - postfix_config is a fixture
from .test_socketmap import world_config

# Several mx, a "*." wildcard, a duplicate (one pattern, every line in the policy strings), uppercase (lowered).
ENFORCE = (
    "version: STSv1\nmode: enforce\nmx: mx1.enforce.example\nmx: *.Mail.Example.NET\nmx: mx2.enforce.example\n"
    "mx: mx1.enforce.example\nmax_age: 604800\n"
)
PLAIN = b"OK secure match=mx1.enforce.example:.mail.example.net:mx2.enforce.example servername=hostname"


def tlsrpt_answer(domain: str) -> bytes:
    return (
        PLAIN + b" policy_type=sts policy_domain=" + domain.encode() + b" policy_ttl=604800"
        b" mx_host_pattern=mx1.enforce.example"
        b" mx_host_pattern=*.mail.example.net mx_host_pattern=mx2.enforce.example"
        b" { policy_string = version: STSv1 } { policy_string = mode: enforce }"
        b" { policy_string = mx: mx1.enforce.example } { policy_string = mx: *.mail.example.net }"
        b" { policy_string = mx: mx2.enforce.example } { policy_string = mx: mx1.enforce.example }"
        b" { policy_string = max_age: 604800 }"
    )


TESTING = "version: STSv1\nmode: testing\nmx: mx.testing.example\nmax_age: 86400\n"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE)
        w.publish("twin.example", ENFORCE)  # the same policy: interned, but the answer names its own domain
        w.publish("testing.example", TESTING)
        w.publish("stall.example", ENFORCE, delay=3.0)  # accepts TLS, then sends nothing for 3 s
        yield w
        assert not w.errors


async def ask(server: SocketmapServer, *requests: tuple[bytes, str]) -> list[bytes]:
    """Send ``(map name, key)`` requests pipelined on one connection; the reply payloads, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"".join(encode(name + b" " + key.encode()) for name, key in requests))
        decoder, replies = NetstringDecoder(100_000), []
        async with asyncio.timeout(10):
            while len(replies) < len(requests):
                data = await reader.read(65536)
                assert data, "connection closed"
                replies += decoder.feed(data)
        return replies
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# -- the answer (sans-I/O) -----------------------------------------------------------------------------------------


def test_format_tlsrpt_for_the_rfc_example() -> None:
    policy = parse_policy(
        "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\n"
        "max_age: 604800\n"
    )
    assert format_tlsrpt(policy, "example.com") == (
        "secure match=mail.example.com:.example.net:backupmx.example.com servername=hostname policy_type=sts "
        "policy_domain=example.com policy_ttl=604800 mx_host_pattern=mail.example.com mx_host_pattern=*.example.net "
        "mx_host_pattern=backupmx.example.com { policy_string = version: STSv1 } { policy_string = mode: enforce } "
        "{ policy_string = mx: mail.example.com } { policy_string = mx: *.example.net } "
        "{ policy_string = mx: backupmx.example.com } { policy_string = max_age: 604800 }"
    )
    # policy_ttl: deprecated in Postfix 3.10 but still accepted, and part of the API contract (../shared/api.md)


def test_format_tlsrpt_extensions_and_other_modes() -> None:
    policy = parse_policy("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60\nnote: a b,c\nbrace: {x}\n")
    # A value with braces cannot be quoted for Postfix (its tokenizer nests on them): left out, the rest kept.
    assert format_tlsrpt(policy, "example.com") == (
        "secure match=mx.example.com servername=hostname policy_type=sts policy_domain=example.com policy_ttl=60 "
        "mx_host_pattern=mx.example.com { policy_string = version: STSv1 } { policy_string = mode: enforce } "
        "{ policy_string = mx: mx.example.com } { policy_string = max_age: 60 } { policy_string = note: a b,c }"
    )
    assert format_tlsrpt(parse_policy(TESTING), "testing.example") is None
    assert format_tlsrpt(parse_policy("version: STSv1\nmode: none\nmax_age: 60\n"), "none.example") is None


# -- the server ----------------------------------------------------------------------------------------------------


async def test_the_tlsrpt_map_name(world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        assert not server.tlsrpt
        name = b"QUERYwithTLSRPT"
        # cold (the lookup's path), then from memory (the hot path), then the memo
        for _ in range(3):
            assert await ask(server, (name, "enforce.example")) == [tlsrpt_answer("enforce.example")]
        # every key form names the Policy Domain, normalised
        keys = ["[enforce.example]:25", "Enforce.Example.", "[ENFORCE.example]", "enforce.example:587"]
        assert await ask(server, *((name, key) for key in keys)) == [tlsrpt_answer("enforce.example")] * 4
        # an identical policy of another domain (one interned object) answers with that domain
        assert await ask(server, (name, "twin.example"), (name, "enforce.example")) == [
            tlsrpt_answer("twin.example"),
            tlsrpt_answer("enforce.example"),
        ]
        # testing, parent lookups, literals: NOTFOUND as on every name
        for key in ["testing.example", ".enforce.example", "[192.0.2.1]", "unpublished.example"]:
            assert await ask(server, (name, key)) == [b"NOTFOUND "], key
        # the plain name, and any other, interleaved on the same connection: unchanged
        assert await ask(server, (b"postfix", "enforce.example"), (name, "twin.example"), (b"x", "twin.example")) == [
            PLAIN,
            tlsrpt_answer("twin.example"),
            PLAIN,
        ]
        assert await ask(server, (b"querywithtlsrpt", "enforce.example")) == [PLAIN]  # the name is exact
    assert server.errors == 0


KEYS = [
    "enforce.example", "ENFORCE.example.", "[enforce.example]", "[enforce.example]:25", "enforce.example:smtp",
    ".enforce.example", "testing.example", "[192.0.2.1]", "192.0.2.1", "2001:db8::1", "[IPv6:2001:db8::1]",
    "[enforce.example", "enforce.example:x y", "", "-bad-.example", "unpublished.example",
]  # fmt: skip


async def test_every_name_answers_as_the_plain_name(world: World, resolver: PolicyResolver) -> None:
    """The plain name's path (inlined for speed) and the one of every other name give the same answers."""
    async with SocketmapServer(resolver, port=0) as server:
        for _ in range(2):  # cold, then from memory
            for key in KEYS:
                plain = await server.answer(b"postfix " + key.encode())
                assert await server.answer(b"other " + key.encode()) == plain, key
                assert await server.answer(b"postfixx " + key.encode()) == plain, key
                assert await server.answer(b"xpostfix " + key.encode()) == plain, key
        assert await server.answer(b"postfix \xff.example") == await server.answer(b"other \xff.example")
        for payload in [b"postfix", b"postfixexample.com", b" enforce.example", b"QUERYwithTLSRPT"]:
            assert await server.answer(payload) == b'PERM malformed request: expected "<name> <key>"', payload


async def test_plain_name_first_then_tlsrpt_name(world: World, resolver: PolicyResolver) -> None:
    """The plain memo never leaks into the TLS-RPT answers, nor the other way round (both cold paths)."""
    async with SocketmapServer(resolver, port=0) as server:
        assert await ask(server, (b"postfix", "enforce.example")) == [PLAIN]
        assert await ask(server, (b"QUERYwithTLSRPT", "enforce.example")) == [tlsrpt_answer("enforce.example")]
        assert await ask(server, (b"QUERYwithTLSRPT", "[twin.example]:25")) == [tlsrpt_answer("twin.example")]
        assert await ask(server, (b"postfix", "twin.example")) == [PLAIN]


async def test_tlsrpt_for_every_name(world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, tlsrpt=True) as server:
        assert server.tlsrpt
        for _ in range(2):  # cold, then from memory
            assert await ask(server, (b"postfix", "[Twin.Example]:25"), (b"QUERYwithTLSRPT", "enforce.example")) == [
                tlsrpt_answer("twin.example"),
                tlsrpt_answer("enforce.example"),
            ]
        assert await ask(server, (b"postfix", "testing.example")) == [b"NOTFOUND "]
    with pytest.raises(MTASTSError, match="tlsrpt must be"):
        SocketmapServer(resolver, tlsrpt=1)  # type: ignore[arg-type]


async def test_postmap_on_the_tlsrpt_map_name(
    postfix_config: Path,  # noqa: F811 - the fixture
    world: World,
    resolver: PolicyResolver,
) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        table = f"socketmap:inet:127.0.0.1:{server.port}:QUERYwithTLSRPT"
        expected = tlsrpt_answer("enforce.example").removeprefix(b"OK ") + b"\n"
        assert await postmap(postfix_config, "enforce.example", table) == (0, expected, b"")
        assert await postmap(postfix_config, "[enforce.example]:25", table) == (0, expected, b"")
        assert await postmap(postfix_config, "testing.example", table) == (1, b"", b"")
        plain = f"socketmap:inet:127.0.0.1:{server.port}:postfix"
        assert await postmap(postfix_config, "enforce.example", plain) == (0, PLAIN.removeprefix(b"OK ") + b"\n", b"")


# -- configuration: TOML, command line, the daemon ---------------------------------------------------------------


def test_toml_keys(tmp_path: Path) -> None:
    path = tmp_path / "socketmap.toml"
    assert load_config(_write(path, "")).tlsrpt is False
    assert load_config(_write(path, "")).fetch_idle_timeout == 15.0
    config = load_config(_write(path, "tlsrpt = true\nfetch_idle_timeout = 2.5\n"))
    assert (config.tlsrpt, config.fetch_idle_timeout) == (True, 2.5)
    for text, message in [
        ('tlsrpt = "yes"\n', "tlsrpt must be true or false"),
        ("tlsrpt = 1\n", "tlsrpt must be true or false"),
        ("fetch_idle_timeout = 0\n", "fetch_idle_timeout"),
        ("fetch_idle_timeout = -1\n", "fetch_idle_timeout"),
        ("fetch_idle_timeout = true\n", "fetch_idle_timeout must be a number"),
    ]:
        with pytest.raises(MTASTSError, match=message):
            load_config(_write(path, text))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mtasts.cli import main, register_serve_socketmap, serve_socketmap_config

    parser = argparse.ArgumentParser()
    register_serve_socketmap(parser.add_subparsers())
    path = _write(tmp_path / "socketmap.toml", "tlsrpt = true\nfetch_idle_timeout = 4\n")

    def config(*argv: str) -> ServerConfig:
        return serve_socketmap_config(parser.parse_args(["serve-socketmap", *argv]))

    assert (config().tlsrpt, config().fetch_idle_timeout) == (False, 15.0)
    assert config("--tlsrpt", "--fetch-idle-timeout", "0.5").tlsrpt is True
    assert config("--tlsrpt", "--fetch-idle-timeout", "0.5").fetch_idle_timeout == 0.5
    assert (config("--config", str(path)).tlsrpt, config("--config", str(path)).fetch_idle_timeout) == (True, 4.0)
    assert config("--config", str(path), "--no-tlsrpt").tlsrpt is False
    for bad in ["0", "-3", "nan", "x"]:
        assert main(["serve-socketmap", "--fetch-idle-timeout", bad]) == 2
        assert "--fetch-idle-timeout" in capsys.readouterr().err


@contextlib.asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[SocketmapServer]:
    """serve(config) while the block runs."""
    stop = asyncio.Event()
    started: asyncio.Future[SocketmapServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, ready=started.set_result, stop=stop))
    try:
        yield await asyncio.wait_for(asyncio.shield(started), 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_daemon_passes_tlsrpt_on(world: World) -> None:
    async with serving(world_config(world, tlsrpt=True)) as server:
        assert server.tlsrpt
        assert await ask(server, (b"postfix", "enforce.example")) == [tlsrpt_answer("enforce.example")]
    async with serving(world_config(world)) as server:
        assert await ask(server, (b"postfix", "enforce.example")) == [PLAIN]


async def test_a_stalled_policy_host_is_notfound_after_fetch_idle_timeout(world: World) -> None:
    """A policy host that accepts TLS, then says nothing: dropped after fetch_idle_timeout, before the socketmap's
    request_timeout — a failed fetch with nothing cached is "no policy" (RFC 8461 §3.3): NOTFOUND, not TEMP."""
    async with serving(world_config(world, fetch_idle_timeout=0.3, request_timeout=2.5)) as server:
        start = time.monotonic()
        assert await ask(server, (b"postfix", "stall.example")) == [b"NOTFOUND "]
        assert time.monotonic() - start < 2.5
    # with the idle timeout above request_timeout, the same host outlasts the request: TEMP (Postfix defers)
    async with serving(world_config(world, fetch_idle_timeout=10, request_timeout=0.3)) as server:
        assert await ask(server, (b"postfix", "stall.example")) == [b"TEMP policy lookup in progress"]
