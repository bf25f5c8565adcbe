"""The Postfix socketmap server over real sockets, raw netstrings, against a loopback World (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mtasts import PolicyResolver, parse_policy
from mtasts.errors import MTASTSError
from mtasts.netstring import NetstringDecoder, encode
from mtasts.socketmap import (
    ServerConfig,
    SocketmapServer,
    format_policy,
    load_config,
    parse_key,
    parse_listen,
    serve,
)
from mtasts.testing import World

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.net\nmx: mx.example.com\nmax_age: 86400\n"
OK_ENFORCE = b"OK secure match=mx.example.com:.example.net servername=hostname"
OTHER = "version: STSv1\nmode: enforce\nmx: mx.{name}\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 86400\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE)
        w.publish("testing.example", TESTING)
        w.publish("none.example", NONE)
        w.publish("expired-cert.example", ENFORCE, cert="expired")
        w.publish("not-found.example", None)  # TXT record, but the policy URL answers 404
        w.publish("slow.example", ENFORCE, delay=0.6)
        w.publish("slow2.example", ENFORCE, delay=0.6)
        for i in range(20):
            w.publish(f"d{i}.example", OTHER.format(name=f"d{i}.example"))
        yield w
        assert not w.errors


@pytest.fixture
async def server(resolver: PolicyResolver) -> AsyncIterator[SocketmapServer]:
    async with SocketmapServer(resolver, port=0) as s:
        yield s


class Client:
    """A raw socketmap client: netstrings out, netstrings in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = NetstringDecoder(100_000)
        self.replies: list[bytes] = []

    @classmethod
    async def connect(cls, server: SocketmapServer) -> Client:
        if server.unix_path is not None:
            return cls(*await asyncio.open_unix_connection(server.unix_path))
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    def send(self, *keys: str) -> None:
        self.writer.write(b"".join(encode(b"postfix " + key.encode()) for key in keys))

    async def replies_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.replies) < count:
                data = await self.reader.read(65536)
                assert data, f"connection closed after {len(self.replies)} of {count} replies"
                self.replies += self.decoder.feed(data)
        got, self.replies = self.replies[:count], self.replies[count:]
        return got

    async def ask(self, key: str) -> bytes:
        self.send(key)
        [reply] = await self.replies_for(1)
        return reply

    async def closed_by_server(self, timeout: float = 2.0) -> bool:
        """Read until EOF; True when the server closed the connection (replies read on the way are kept)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.replies += self.decoder.feed(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


# -- the reply (sans-I/O parts) ---------------------------------------------------------------------------------


def test_format_policy() -> None:
    assert format_policy(parse_policy(ENFORCE)) == OK_ENFORCE.decode()[3:]
    assert format_policy(parse_policy(TESTING)) is None
    assert format_policy(parse_policy(NONE)) is None
    wild = "version: STSv1\nmode: enforce\nmx: *.b.example\nmx: a.example\nmx: *.B.example.\nmax_age: 1\n"
    assert format_policy(parse_policy(wild)) == "secure match=.b.example:a.example servername=hostname"


@pytest.mark.parametrize(
    ("key", "domain"),
    [
        ("example.com", "example.com"),
        ("example.com.", "example.com."),
        ("[example.com]", "example.com"),
        ("[example.com]:25", "example.com"),
        ("[example.com]:smtp", "example.com"),
        ("example.com:587", "example.com"),
        (".example.com", None),
        ("[192.0.2.1]", None),
        ("[192.0.2.1]:25", None),
        ("[IPv6:2001:db8::1]", None),
        ("[ipv6:2001:db8::1]:25", None),
        ("192.0.2.1", None),
        ("192.0.2.1:25", None),
        ("2001:db8::1", None),
    ],
)
def test_parse_key(key: str, domain: str | None) -> None:
    assert parse_key(key) == domain


@pytest.mark.parametrize("key", ["[example.com", "[example.com]x", "[example.com]:", "example.com:", "a:b:c.example"])
def test_parse_key_malformed(key: str) -> None:
    from mtasts.errors import DomainError

    with pytest.raises(DomainError):
        parse_key(key)


# -- answers over TCP -------------------------------------------------------------------------------------------


async def test_enforce_domain(world: World, server: SocketmapServer) -> None:
    client = await Client.connect(server)
    assert await client.ask("enforce.example") == OK_ENFORCE
    assert await client.ask("enforce.example") == OK_ENFORCE  # from the cache now
    await client.close()
    assert world.queries("_mta-sts.enforce.example", "TXT") == 1
    assert world.requests("mta-sts.enforce.example") == 1
    assert (server.requests, server.connections, server.errors) == (2, 1, 0)


@pytest.mark.parametrize(
    "key",
    [
        "enforce.example",
        "ENFORCE.Example.",
        "[enforce.example]",
        "[enforce.example]:25",
        "[Enforce.Example.]:smtp",
        "enforce.example:25",
    ],
)
async def test_key_forms(world: World, server: SocketmapServer, key: str) -> None:
    assert await server.answer(b"postfix " + key.encode()) == OK_ENFORCE
    client = await Client.connect(server)
    assert await client.ask(key) == OK_ENFORCE
    await client.close()
    assert world.queries("_mta-sts.enforce.example", "TXT") == 1


@pytest.mark.parametrize(
    "key",
    [
        ".enforce.example",  # Postfix's parent-domain lookup: no parent fallback (RFC 8461 §3.4)
        "[192.0.2.1]",
        "[192.0.2.1]:25",
        "[IPv6:2001:db8::1]",
        "[ipv6:2001:db8::1]:587",
        "192.0.2.1",
        "2001:db8::1",
        "exa mple.example",
        "a/b.example",
        "-bad.example",
        "x" * 300 + ".example",
        "[enforce.example",
        "enforce.example:x y",
        "",
    ],
)
async def test_notfound_without_any_io(world: World, server: SocketmapServer, key: str) -> None:
    client = await Client.connect(server)
    assert await client.ask(key) == b"NOTFOUND "
    await client.close()
    assert not world.dns_queries and not world.http_requests


async def test_non_utf8_key_and_malformed_requests(world: World, server: SocketmapServer) -> None:
    assert await server.answer(b"postfix \xff\xfe.example") == b"NOTFOUND "
    perm = b'PERM malformed request: expected "<name> <key>"'
    assert await server.answer(b"enforce.example") == perm  # no name
    assert await server.answer(b" enforce.example") == perm  # an empty name
    assert await server.answer(b"") == perm
    assert not world.dns_queries


@pytest.mark.parametrize(
    "domain", ["testing.example", "none.example", "unpublished.example", "expired-cert.example", "not-found.example"]
)
async def test_no_enforce_policy_is_notfound(world: World, server: SocketmapServer, domain: str) -> None:
    client = await Client.connect(server)
    assert await client.ask(domain) == b"NOTFOUND "
    assert await client.ask(domain) == b"NOTFOUND "
    await client.close()
    if domain in ("expired-cert.example", "not-found.example"):
        assert world.requests(f"mta-sts.{domain}") <= 1  # the failed fetch is not retried (§3.3 back-off)
    else:
        assert world.queries(f"_mta-sts.{domain}", "TXT") == 1  # the second answer came from memory


async def test_name_is_ignored(server: SocketmapServer) -> None:
    assert await server.answer(b"other-name enforce.example") == OK_ENFORCE


# -- pipelining -------------------------------------------------------------------------------------------------


async def test_pipelined_replies_in_request_order(world: World, server: SocketmapServer) -> None:
    await server.answer(b"postfix enforce.example")  # cached
    await server.answer(b"postfix d0.example")  # cached
    keys = ["slow.example", "slow2.example"]
    expected = [OK_ENFORCE, OK_ENFORCE]
    cold = [f"d{i}.example" for i in range(1, 12)]
    for i in range(48):
        if i % 4 == 0 and cold:
            key = cold.pop()
            keys.append(key)
            expected.append(f"OK secure match=mx.{key} servername=hostname".encode())
        elif i % 4 == 1:
            keys.append("d0.example")
            expected.append(b"OK secure match=mx.d0.example servername=hostname")
        elif i % 4 == 2:
            keys.append("testing.example")
            expected.append(b"NOTFOUND ")
        else:
            keys.append("[enforce.example]:25")
            expected.append(OK_ENFORCE)
    assert len(keys) == 50
    client = await Client.connect(server)
    start = time.monotonic()
    client.send(*keys)  # one write
    first = await client.replies_for(1)
    # Before the slow domain's reply could go out, every other request had been answered already (cold
    # lookups ran concurrently, not behind the slow one); the two slow ones ran concurrently too.
    for i in range(1, 12):
        assert world.queries(f"_mta-sts.d{i}.example", "TXT") == 1
    rest = await client.replies_for(49)
    elapsed = time.monotonic() - start
    assert [*first, *rest] == expected
    assert 0.6 <= elapsed < 1.1
    await client.close()


async def test_max_pipeline_applies_back_pressure(world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, max_pipeline=4) as server:
        client = await Client.connect(server)
        keys = ["slow.example"] + [f"d{i}.example" for i in range(10)]
        client.send(*keys)
        await asyncio.sleep(0.3)
        started = sum(world.queries(f"_mta-sts.d{i}.example", "TXT") for i in range(10))
        assert started == 3  # the slow one and three more in flight; the rest wait
        replies = await client.replies_for(11)
        assert replies[0] == OK_ENFORCE
        assert replies[1:] == [f"OK secure match=mx.d{i}.example servername=hostname".encode() for i in range(10)]
        await client.close()


async def test_many_connections_at_once(world: World, server: SocketmapServer) -> None:
    async def one(n: int) -> list[bytes]:
        client = await Client.connect(server)
        keys = [f"d{(n + i) % 20}.example" for i in range(10)] + ["enforce.example", ".x.example"]
        client.send(*keys)
        replies = await client.replies_for(len(keys))
        await client.close()
        return replies

    results = await asyncio.gather(*(one(n) for n in range(60)))
    for n, replies in enumerate(results):
        assert replies[:10] == [
            f"OK secure match=mx.d{(n + i) % 20}.example servername=hostname".encode() for i in range(10)
        ]
        assert replies[10:] == [OK_ENFORCE, b"NOTFOUND "]
    assert server.connections == 60 and server.requests == 60 * 12
    for i in range(20):  # single-flight: 60 connections, one lookup per domain
        assert world.queries(f"_mta-sts.d{i}.example", "TXT") == 1


# -- malformed input, timeouts, errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"x:postfix a,",  # bad length
        b":postfix a,",  # empty length
        b"09:postfix a,",  # leading zero
        b"9postfix a,",  # missing colon
        b"9:postfix a;",  # missing comma
        b"9:postfix ab,",  # length too short: no comma where it should be
        b"1025:" + b"x" * 1025 + b",",  # over max_request
        b"99999999999999999999:",  # absurd length
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage
    ],
)
async def test_malformed_input_closes_only_that_connection(
    server: SocketmapServer, wire: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    good = await Client.connect(server)
    bad = await Client.connect(server)
    bad.writer.write(encode(b"postfix enforce.example") + wire)  # a good request first: still answered
    assert await bad.closed_by_server()
    assert bad.replies == [OK_ENFORCE]
    assert server.errors == 1
    assert len([r for r in caplog.records if "closing the connection" in r.getMessage()]) == 1
    assert await good.ask("enforce.example") == OK_ENFORCE
    assert server.open_connections == 1
    await good.close()
    await bad.close()


async def test_request_timeout_answers_temp_and_the_lookup_goes_on(world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, request_timeout=0.2) as server:
        client = await Client.connect(server)
        assert await client.ask("slow.example") == b"TEMP policy lookup in progress"
        assert server.timeouts == 1
        for _ in range(50):  # the shared lookup was not cancelled: it completes and fills the cache
            if resolver.cached_policy("slow.example") == parse_policy(ENFORCE):
                break
            await asyncio.sleep(0.05)
        assert await client.ask("slow.example") == OK_ENFORCE
        await client.close()
    assert world.requests("mta-sts.slow.example") == 1


async def test_internal_error_is_temp_and_logged(
    world: World, resolver: PolicyResolver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside a lookup is logged with its traceback and answered TEMP, never NOTFOUND (issue 12)."""

    async def broken(key: str) -> None:
        raise RuntimeError("a bug")

    async with SocketmapServer(resolver, port=0) as server:
        client = await Client.connect(server)
        assert await client.ask("enforce.example") == OK_ENFORCE
        monkeypatch.setattr(resolver, "_check_txt", broken)
        with caplog.at_level(logging.ERROR, logger="mtasts"):
            assert await client.ask("d1.example") == b"TEMP MTA-STS lookup failed on this host (local error)"
        assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
        assert server.deferred == 1
        assert await client.ask("enforce.example") == OK_ENFORCE  # still serving what memory holds
        await client.close()


async def test_a_closed_resolver_answers_temp(resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        client = await Client.connect(server)
        assert await client.ask("enforce.example") == OK_ENFORCE
        await resolver.aclose()  # the daemon is shutting down: new lookups are a local fault
        assert await client.ask("d1.example") == b"TEMP MTA-STS lookup failed on this host (local error)"
        assert await client.ask("enforce.example") == OK_ENFORCE  # still serving what memory holds
        await client.close()


async def test_a_local_fault_on_sendmails_and_exims_map_names_is_temp(resolver: PolicyResolver) -> None:
    """The ``sts`` (sendmail) and ``exim`` map names take the same slow path: a local fault is TEMP there too,
    never NOTFOUND; what memory holds is still served on ``sts``."""
    async with SocketmapServer(resolver, port=0) as server:
        assert await server.answer(b"sts enforce.example") == OK_ENFORCE
        await resolver.aclose()  # new lookups are a local fault
        local = b"TEMP MTA-STS lookup failed on this host (local error)"
        assert await server.answer(b"sts d1.example") == local
        assert (await server.answer(b"exim d2.example")).startswith(b"TEMP ")
        assert await server.answer(b"sts enforce.example") == OK_ENFORCE


async def test_idle_connections_are_closed(resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0, idle_timeout=0.3, first_request_timeout=0.3) as server:
        busy = await Client.connect(server)
        idle = await Client.connect(server)
        for _ in range(4):
            await asyncio.sleep(0.1)
            assert await busy.ask("[192.0.2.1]") == b"NOTFOUND "
        assert await idle.closed_by_server(timeout=1.0)
        assert await busy.ask("[192.0.2.1]") == b"NOTFOUND "
        assert await busy.closed_by_server(timeout=1.0)
        await busy.close()
        await idle.close()


async def test_client_half_close_still_gets_its_replies(server: SocketmapServer) -> None:
    client = await Client.connect(server)
    client.send("slow.example", "enforce.example")
    client.writer.write_eof()
    assert await client.closed_by_server()
    assert client.replies == [OK_ENFORCE, OK_ENFORCE]
    await client.close()


# -- shutdown -------------------------------------------------------------------------------------------------------


async def test_graceful_aclose_finishes_requests_in_flight(resolver: PolicyResolver) -> None:
    server = SocketmapServer(resolver, port=0)
    await server.start()
    port = server.port
    idle = await Client.connect(server)
    busy = await Client.connect(server)
    busy.send("slow.example")
    await asyncio.sleep(0.1)
    await server.aclose(grace=5.0)
    assert await busy.closed_by_server()
    assert busy.replies == [OK_ENFORCE]
    assert await idle.closed_by_server()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await server.aclose()  # idempotent
    await busy.close()
    await idle.close()


async def test_aclose_aborts_after_grace(resolver: PolicyResolver) -> None:
    server = SocketmapServer(resolver, port=0)
    await server.start()
    client = await Client.connect(server)
    client.send("slow.example")
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await server.aclose(grace=0.1)
    assert time.monotonic() - start < 0.5
    assert await client.closed_by_server()
    assert client.replies == []
    await client.close()


async def test_serve_forever_returns_on_aclose(resolver: PolicyResolver) -> None:
    server = SocketmapServer(resolver, port=0)
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.05)
    client = await Client.connect(server)
    assert await client.ask("[192.0.2.1]") == b"NOTFOUND "
    await server.aclose()
    await asyncio.wait_for(task, 2)
    await client.close()


# -- Unix socket ----------------------------------------------------------------------------------------------------


async def test_unix_socket(resolver: PolicyResolver, tmp_path: Path) -> None:
    sock = tmp_path / "mtasts.sock"
    path = str(sock)
    async with SocketmapServer(resolver, unix_path=path, unix_mode=0o660) as server:
        mode = sock.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        assert server.address == f"unix:{path}"
        client = await Client.connect(server)
        client.send("enforce.example", ".enforce.example", "none.example")
        assert await client.replies_for(3) == [OK_ENFORCE, b"NOTFOUND ", b"NOTFOUND "]
        await client.close()
    assert not sock.exists()


# -- configuration and serve() ---------------------------------------------------------------------------------------

FULL_TOML = """
listen = "[::1]:9000"
store = "sqlite:/var/lib/mtasts/policies.sqlite3"
cache_size = 5000
fetch_timeout = 20
request_timeout = 10.5
max_request = 2048
max_pipeline = 64
idle_timeout = 120
shutdown_grace = 2
refresh_period = 600
log_level = "debug"
nameserver = "127.0.0.1:5353"
cafile = "/etc/ssl/certs/ca-certificates.crt"
policy_port = 8443
unix_mode = 0o660
"""


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "mtasts.toml"
    path.write_text(FULL_TOML)
    assert load_config(path) == ServerConfig(
        host="::1",
        port=9000,
        store="sqlite:/var/lib/mtasts/policies.sqlite3",
        cache_size=5000,
        fetch_timeout=20,
        request_timeout=10.5,
        max_request=2048,
        max_pipeline=64,
        idle_timeout=120,
        shutdown_grace=2,
        refresh_period=600,
        log_level="debug",
        nameserver="127.0.0.1:5353",
        cafile="/etc/ssl/certs/ca-certificates.crt",
        policy_port=8443,
        unix_mode=0o660,
    )
    path.write_text('unix = "/run/mtasts/socketmap.sock"\n')
    assert load_config(path).unix_path == "/run/mtasts/socketmap.sock"
    path.write_text("")
    assert load_config(path) == ServerConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('listen = "127.0.0.1:8461"\nzones = 1\nstrict_testing = true\n', "strict_testing, zones"),
        ("cache_size = 0\n", "cache_size"),
        ('cache_size = "10"\n', "cache_size must be an integer"),
        ("request_timeout = true\n", "request_timeout must be a number"),
        ('log_level = "loud"\n', "log_level"),
        ('listen = "127.0.0.1:8461"\nunix = "/x.sock"\n', "either listen or unix"),
        ('listen = "::1:8461"\n', "[::1]:8461"),
        ("listen = [\n", "not valid TOML"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mtasts.toml"
    path.write_text(text)
    with pytest.raises(MTASTSError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_the_documented_configuration_loads_and_covers_every_key(tmp_path: Path) -> None:
    import re

    from mtasts.socketmap import TOML_KEYS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "postfix.md").read_text(encoding="utf-8")
    [example] = re.findall(r"```toml\n(.*?)```", doc, re.DOTALL)
    path = tmp_path / "socketmap.toml"
    path.write_text(example)
    config = load_config(path)
    assert (config.host, config.port, config.store) == ("127.0.0.1", 8461, "sqlite:/var/lib/mtasts/policies.sqlite3")
    for key in TOML_KEYS:
        assert re.search(rf"^#? ?({key} = |\[{key}\.)", example, re.MULTILINE), key  # a key, or a table
        assert f"| `{key}` |" in doc, key


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(MTASTSError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8461", ("127.0.0.1", 8461)),
        ("[::1]:25", ("::1", 25)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]", ("::1", 8461)),
        ("127.0.0.1", ("127.0.0.1", 8461)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", [":8461", "::1:8461", "[::1]8461", "host:port", "host:70000"])
def test_parse_listen_bad(text: str) -> None:
    with pytest.raises(MTASTSError):
        parse_listen(text)


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    import argparse

    from mtasts.cli import register_serve_socketmap, serve_socketmap_config

    path = tmp_path / "mtasts.toml"
    path.write_text('unix = "/run/x.sock"\nstore = "memory"\npolicy_port = 8443\ncache_size = 7\n')
    parser = argparse.ArgumentParser()
    register_serve_socketmap(parser.add_subparsers())
    args = parser.parse_args(["serve-socketmap", "--config", str(path), "--listen", "[::1]:9", "--cache-size", "9"])
    config = serve_socketmap_config(args)
    assert (config.host, config.port, config.unix_path) == ("::1", 9, None)
    assert (config.store, config.cache_size, config.policy_port) == ("memory", 9, 8443)
    args = parser.parse_args(["serve-socketmap", "--policy-port", "443", "--config", str(path)])
    assert serve_socketmap_config(args).policy_port == 443
    assert serve_socketmap_config(parser.parse_args(["serve-socketmap"])) == ServerConfig()


def test_cli_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mtasts.cli import main

    path = tmp_path / "mtasts.toml"
    path.write_text("zones = {}\n")
    assert main(["serve-socketmap", "--config", str(path)]) == 2
    assert "unknown key" in capsys.readouterr().err


def world_config(world: World, **kwargs: Any) -> ServerConfig:
    kwargs.setdefault("store", "memory")
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        nameserver=f"{world.host}:{world.dns_port}",
        cafile=world.ca_pem_path,
        policy_port=world.https_port,
        **kwargs,
    )


async def run_serve(config: ServerConfig, keys: list[str]) -> list[bytes]:
    """serve() until the replies for ``keys`` are in, then set its stop event."""
    stop = asyncio.Event()
    started: asyncio.Future[SocketmapServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, ready=started.set_result, stop=stop))
    server = await asyncio.wait_for(asyncio.shield(started), 5)
    client = await Client.connect(server)
    client.send(*keys)
    replies = await client.replies_for(len(keys))
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await client.closed_by_server()
    await client.close()
    return replies


async def test_serve_until_stopped(world: World) -> None:
    replies = await run_serve(world_config(world), ["enforce.example", "testing.example", ".enforce.example"])
    assert replies == [OK_ENFORCE, b"NOTFOUND ", b"NOTFOUND "]


async def test_serve_restores_from_its_store(world: World, tmp_path: Path) -> None:
    config = world_config(world, store=f"sqlite:{tmp_path / 'policies.sqlite3'}")
    assert await run_serve(config, ["enforce.example"]) == [OK_ENFORCE]
    world.unpublish("enforce.example")  # gone from DNS and HTTPS: only the store remembers the policy
    assert await run_serve(config, ["enforce.example"]) == [OK_ENFORCE]
    assert world.requests("mta-sts.enforce.example") == 1


async def test_serve_reports_an_address_in_use(world: World, server: SocketmapServer) -> None:
    config = world_config(world)
    config.port = server.port
    with pytest.raises(MTASTSError, match="cannot listen"):
        await serve(config, stop=asyncio.Event())


def test_the_event_loop_key(tmp_path: Path) -> None:
    """``event_loop`` (TOML, ``--event-loop``): asyncio by default, uvloop on request, anything else refused."""
    import argparse

    from mtasts.cli import register_serve_socketmap, serve_socketmap_config
    from mtasts.errors import UsageError
    from mtasts.socketmap.daemon import event_loop_factory

    assert ServerConfig().event_loop == "asyncio"
    assert event_loop_factory("asyncio") is None
    path = tmp_path / "mtasts.toml"
    path.write_text('event_loop = "uvloop"\n')
    assert load_config(path).event_loop == "uvloop"
    loop = event_loop_factory("uvloop")
    assert loop is not None
    made = loop()
    try:
        assert type(made).__module__.startswith("uvloop")
    finally:
        made.close()
    parser = argparse.ArgumentParser()
    register_serve_socketmap(parser.add_subparsers())
    args = parser.parse_args(["serve-socketmap", "--config", str(path), "--event-loop", "asyncio"])
    assert serve_socketmap_config(args).event_loop == "asyncio"
    with pytest.raises(UsageError, match="event_loop must be one of asyncio, uvloop"):
        ServerConfig(event_loop="trio")
