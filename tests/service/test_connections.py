"""The DynamoDB client's HTTP/1.1 connections, against small real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from idemgate._storage._connections import ConnectionPool, ExchangeError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"host": "db.test", "x-amz-target": "DynamoDB_20120810.GetItem"}


def answer(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return f"HTTP/1.1 200 OK\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


class Server:
    """Serves ``handler`` on one connection after another; counts connections and heads."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.url = ""

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()


def echo_forever(*extra: str) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(reader)
            writer.write(answer(body, *extra))
            await writer.drain()

    return handler


def test_keeps_one_connection_alive_across_requests() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            heads.append(head)
            writer.write(answer(body))

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = ConnectionPool(server.url, size=4)
            answers = [await pool.post(HEADERS, b'{"n":%d}' % n) for n in range(3)]
            await pool.close()
            expected = [(200, b'{"n":%d}' % n) for n in range(3)]
            assert [(a.status, a.body) for a in answers] == expected
            assert server.connections == 1

    asyncio.run(scenario())
    assert heads[0].startswith(b"POST / HTTP/1.1\r\nhost: db.test\r\n")
    assert b"content-length: 7\r\n" in heads[0]


def test_connection_close_answer_is_not_reused() -> None:
    async def scenario() -> None:
        async with Server(echo_forever("Connection: close")) as server:
            pool = ConnectionPool(server.url, size=4)
            for _ in range(2):
                assert (await pool.post(HEADERS, b"{}")).body == b"{}"
            await pool.close()
            assert server.connections == 2

    asyncio.run(scenario())


def test_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        writer.write(answer(body))
        await writer.drain()  # then hang up, as a server does after its keep-alive timeout

    async def scenario() -> None:
        async with Server(one_answer) as server:
            pool = ConnectionPool(server.url, size=4)
            await pool.post(HEADERS, b"[1]")
            await asyncio.sleep(0.05)
            assert (await pool.post(HEADERS, b"[2]")).body == b"[2]"
            await pool.close()
            assert server.connections == 2

    asyncio.run(scenario())


def test_request_crossing_a_far_side_close_is_sent_again_on_a_fresh_connection() -> None:
    """The far side closes a kept-alive connection just as a request goes out on it."""

    async def answer_then_hang_up_on_the_next(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        _, body = await read_request(reader)
        writer.write(answer(body))
        await writer.drain()
        await read_request(reader)  # the next request arrives, and the connection is dropped

    async def scenario() -> None:
        async with Server(answer_then_hang_up_on_the_next) as server:
            pool = ConnectionPool(server.url, size=1)
            await pool.post(HEADERS, b"[1]")
            assert (await pool.post(HEADERS, b"[2]")).body == b"[2]"
            await pool.close()
            assert server.connections == 2

    asyncio.run(scenario())


def test_request_cut_off_mid_answer_is_not_sent_again() -> None:
    """Part of an answer came back, so the far side had the request: the caller decides."""

    async def answer_then_cut_the_next(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        _, body = await read_request(reader)
        writer.write(answer(body))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")
        await writer.drain()

    async def scenario() -> None:
        async with Server(answer_then_cut_the_next) as server:
            pool = ConnectionPool(server.url, size=1)
            await pool.post(HEADERS, b"[1]")
            with pytest.raises(ExchangeError):
                await pool.post(HEADERS, b"[2]")
            assert server.connections == 1

    asyncio.run(scenario())


def test_connection_idle_too_long_is_closed_not_reused() -> None:
    closed = asyncio.Event()

    async def echo_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                _, body = await read_request(reader)
                writer.write(answer(body))
        finally:
            closed.set()

    async def scenario() -> None:
        async with Server(echo_until_closed) as server:
            pool = ConnectionPool(server.url, size=1, idle_timeout_s=0)
            await pool.post(HEADERS, b"[1]")
            await pool.post(HEADERS, b"[2]")
            await asyncio.wait_for(closed.wait(), 5)  # the first one, closed by the pool
            await pool.close()
            assert server.connections == 2

    asyncio.run(scenario())


def test_chunked_answer_is_joined() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'3\r\n{"a\r\n5\r\n":[]}\r\n0\r\n\r\n'
        )
        await writer.drain()

    async def scenario() -> None:
        async with Server(chunked) as server:
            got = await ConnectionPool(server.url, size=1).post(HEADERS, b"{}")
            assert (got.status, got.body) == (400, b'{"a":[]}')

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "reply",
    [b"HTTQ/1.1 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"],
    ids=["malformed", "cut-short"],
)
def test_broken_answer_raises_exchange_error(reply: bytes) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async def scenario() -> None:
        async with Server(broken) as server:
            pool = ConnectionPool(server.url, size=1)
            with pytest.raises(ExchangeError):
                await pool.post(HEADERS, b"{}")

    asyncio.run(scenario())


def test_silent_server_times_out_and_the_connection_is_dropped() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def scenario() -> None:
        async with Server(silent) as server:
            pool = ConnectionPool(server.url, size=1)
            for _ in range(2):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await pool.post(HEADERS, b"{}")
            assert server.connections == 2

    asyncio.run(scenario())


def test_refused_connection_raises_os_error() -> None:
    async def scenario() -> None:
        async with Server(echo_forever()) as server:
            url = server.url
        with pytest.raises(ConnectionRefusedError):
            await ConnectionPool(url, size=1).post(HEADERS, b"{}")

    asyncio.run(scenario())


def test_pool_size_bounds_concurrent_connections() -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(answer(body))

    async def scenario() -> None:
        async with Server(slow_echo) as server:
            pool = ConnectionPool(server.url, size=2)
            bodies = [b"[%d]" % n for n in range(8)]
            answers = await asyncio.gather(*(pool.post(HEADERS, body) for body in bodies))
            await pool.close()
            assert [a.body for a in answers] == bodies
            assert server.connections == 2

    asyncio.run(scenario())


def test_only_http_endpoints_are_accepted() -> None:
    with pytest.raises(ValueError, match="not an http"):
        ConnectionPool("ftp://db.test", size=1)
