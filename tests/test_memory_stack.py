"""Two ustack stacks joined in memory, through the asyncio API (no root needed)."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from ustack import Stack
from ustack.aio import run_until


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_echo_over_memory_wire(run):
    async def main():
        a, b, wire = Stack.memory_pair()
        async with a, b:
            await b.start_server(echo, port=7)
            reader, writer = await a.open_connection("198.18.0.2", 7)
            payload = os.urandom(1_000_000)

            async def send() -> None:   # write and read at once: buffers are Linux-sized
                writer.write(payload)
                await writer.drain()
                writer.write_eof()
            sender = asyncio.create_task(send())
            got = await reader.read(-1)
            await sender
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            writer.close()
            await writer.wait_closed()
            # b closed after a's FIN: b went LAST-ACK -> CLOSED; a sent the first FIN
            assert await run_until(lambda: [c.state for c in a.connections()] == ["TIME-WAIT"])
            assert await run_until(lambda: [c.state for c in b.connections()] == ["LISTEN"])
    run(main())


def test_transfer_survives_loss(run):
    """Drop every 7th data packet in one direction: retransmission (TLP, fast retransmit,
    RTO) must deliver every byte in order."""
    async def main():
        a, b, wire = Stack.memory_pair()
        count = {"n": 0, "dropped": 0}

        def lossy(direction: str, packet: bytes) -> bool:
            if direction != "a->b" or len(packet) < 200:
                return False
            count["n"] += 1
            if count["n"] % 7 == 0:
                count["dropped"] += 1
                return True
            return False
        wire.drop_if(lossy)
        async with a, b:
            await b.start_server(echo, port=7)
            reader, writer = await a.open_connection("198.18.0.2", 7)
            payload = os.urandom(300_000)
            writer.write(payload)       # no drain(): the transport buffers it all
            writer.write_eof()
            got = await asyncio.wait_for(reader.read(-1), 60)
            assert got == payload
            assert count["dropped"] > 10
            assert a.counters["TcpRetransSegs"] >= count["dropped"]
    run(main())


def test_api_misuse_raises_clear_errors(run):
    async def main():
        a, b, wire = Stack.memory_pair()
        with pytest.raises(RuntimeError, match="not running"):
            await a.open_connection("198.18.0.2", 7)
        async with a, b:
            with pytest.raises(TypeError, match="host must be a str"):
                await a.open_connection(b"198.18.0.2", 7)
            with pytest.raises(OSError, match="IPv4"):
                await a.open_connection("198.18.0.2", 7, family=socket.AF_INET6)
            # names resolve as asyncio resolves them ("localhost" from /etc/hosts: no DNS
            # query leaves the machine); nothing answers for 127.0.0.1 on the memory wire
            with pytest.raises(asyncio.TimeoutError):
                await a.open_connection("localhost", 7, timeout=0.2)
            with pytest.raises(ValueError, match="port"):
                await a.open_connection("198.18.0.2", 70000)
            with pytest.raises(KeyError, match="no such sysctl"):
                a.sysctl["net.ipv4.tcp_no_such_thing"] = 1
            with pytest.raises(ValueError, match="between"):
                a.sysctl["net.ipv4.tcp_fin_timeout"] = -5
            server = await b.start_server(echo, port=7)
            with pytest.raises(OSError, match="Address already in use.*1 listening"):
                await b.start_server(echo, port=7)
            server.close()
            with pytest.raises(ConnectionRefusedError):
                await a.open_connection("198.18.0.2", 7)
    run(main())


def test_backpressure_pauses_writer(run):
    """A peer that does not read: the window closes, write() buffers, drain() waits."""
    async def main():
        a, b, wire = Stack.memory_pair()
        readers = []

        async def sleeper(reader, writer):
            readers.append((reader, writer))
            await asyncio.sleep(3600)
        async with a, b:
            await b.start_server(sleeper, port=9)
            reader, writer = await a.open_connection("198.18.0.2", 9)
            await run_until(lambda: bool(readers))
            readers[0][1].transport.pause_reading()
            block = b"p" * 65536
            drained = 0
            for _ in range(200):
                writer.write(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.2)
                except asyncio.TimeoutError:
                    break
                drained += 1
            assert drained < 200, "drain() never waited although nobody reads"
            assert writer.transport.get_write_buffer_size() > 0
            readers[0][1].transport.resume_reading()
            await asyncio.wait_for(writer.drain(), 10)
            writer.close()
    run(main())


def test_so_linger_close_waits_for_the_fin_ack_or_the_linger_time(run):
    """SO_LINGER {on, N}: wait_closed() returns when the FIN is acknowledged (the state has
    left FIN-WAIT-1), or after N seconds with the FIN still unacknowledged (the orphan goes
    on retransmitting), as Linux's sk_stream_wait_close."""
    import socket as pysocket
    import struct

    async def main():
        a, b, wire = Stack.memory_pair()
        async with a, b:
            await b.start_server(echo, port=7)
            loop = asyncio.get_running_loop()
            # 1. the FIN is ACKed: wait_closed returns with the connection past FIN-WAIT-1
            _reader, writer = await a.open_connection("198.18.0.2", 7)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_LINGER, struct.pack("ii", 1, 5))
            writer.close()
            await writer.wait_closed()
            assert [c.state for c in a.connections()][0] in ("FIN-WAIT-2", "TIME-WAIT")
            # 2. everything a->b is lost: wait_closed returns after the linger time, the
            #    orphan is still in FIN-WAIT-1
            _reader, writer = await a.open_connection("198.18.0.2", 7)
            writer.get_extra_info("socket").setsockopt(
                pysocket.SOL_SOCKET, pysocket.SO_LINGER, struct.pack("ii", 1, 1))
            wire.drop_if(lambda direction, packet: direction == "a->b")
            t0 = loop.time()
            writer.close()
            await writer.wait_closed()
            assert loop.time() - t0 >= 0.95
            states = {c.state for c in a.connections() if c.orphan}
            assert states == {"FIN-WAIT-1"}, a.connections()
            assert not a.host.close_waiters
    run(main())


def test_socket_options_of_the_data_engine(run):
    """TCP_CONGESTION, TCP_USER_TIMEOUT through the socket-like object asyncio hands out
    (get_extra_info("socket")), with the socket module's constants."""
    import socket

    async def main():
        a, b, wire = Stack.memory_pair()
        async with a, b:
            await b.start_server(echo, port=7)
            reader, writer = await a.open_connection("198.18.0.2", 7)
            sock = writer.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16) \
                .rstrip(b"\0") == b"cubic"
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16) \
                .rstrip(b"\0") == b"reno"
            with pytest.raises(OSError) as e:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"vegas")
            assert e.value.errno == 2
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1500)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 1500
            assert "reno" in str([c for c in a.connections() if c.state == "ESTAB"][0])
            writer.write(b"x" * 100)
            assert await reader.readexactly(100) == b"x" * 100
            writer.close()
            await writer.wait_closed()
    run(main())


def test_a_protocol_that_raises_resets_only_its_own_connection(run):
    """A bug in a user's protocol (connection_made, data_received, connection_lost raising)
    is reported to the loop's exception handler and resets that connection; the link and
    every other connection go on."""
    async def main():
        loop = asyncio.get_running_loop()
        reported: list[str] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx["message"]))
        a, b, wire = Stack.memory_pair()

        class Broken(asyncio.Protocol):
            def __init__(self, where: str) -> None:
                self.where = where

            def connection_made(self, transport):
                if self.where == "connection_made":
                    raise RuntimeError("boom")

            def data_received(self, data):
                raise RuntimeError("boom")

            def connection_lost(self, exc):
                raise RuntimeError("boom again")

        async with a, b:
            await b.start_server(echo, port=7)
            await b.create_server(lambda: Broken("data_received"), port=8)
            await b.create_server(lambda: Broken("connection_made"), port=9)
            for port in (8, 9):
                reader, writer = await a.open_connection("198.18.0.2", port)
                writer.write(b"x")
                with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                    await asyncio.wait_for(reader.readexactly(1), 5)
                writer.close()
            # the stack still serves everyone else
            reader, writer = await a.open_connection("198.18.0.2", 7)
            writer.write(b"still here")
            assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
            writer.close()
        assert any("data_received" in m for m in reported), reported
        assert any("connection_made" in m for m in reported), reported
        assert any("connection_lost" in m for m in reported), reported
    run(main())


@pytest.mark.parametrize("address, kernel_address, message", [
    ("198.18.0.2", "198.18.0.1", "prefix length"),
    ("198.18.0.2", "not-an-address/24", "prefix length"),
    ("198.18.1.2", "198.18.0.1/24", "outside the kernel's network"),
    ("198.18.0.1", "198.18.0.1/24", "both 198.18.0.1"),
    ("198.18.0.255", "198.18.0.1/24", "broadcast"),
    ("::1", "198.18.0.1/24", "IPv4"),
    ("localhost", "198.18.0.1/24", "IPv4"),
])
def test_tun_addresses_are_checked_before_anything_is_created(address, kernel_address, message):
    with pytest.raises(ValueError, match=message):
        Stack.tun(address=address, kernel_address=kernel_address)


def test_ports_must_be_ints(run):
    async def main():
        a, b, wire = Stack.memory_pair()
        async with a, b:
            with pytest.raises(TypeError, match="port must be an int"):
                await b.create_server(asyncio.Protocol, port="80")
            with pytest.raises(ValueError, match="0..65535"):
                await b.create_server(asyncio.Protocol, port=70000)
            with pytest.raises(TypeError, match="port must be an int"):
                await a.open_connection("198.18.0.2", 7.0)
            with pytest.raises(ValueError, match="1..65535"):
                await a.open_connection("198.18.0.2", 0)
    run(main())
