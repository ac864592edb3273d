"""TUN offloads (virtio-net headers, checksum and TSO offloads) against the kernel: the kernel
hands ustack super-segments of up to 64 KB with partial checksums, ustack takes each whole as
Linux takes a GRO packet, and the bytes come through exact in both directions."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from tests.core.trace import ACK, PSH, Trace
from ustack import Stack
from ustack.link.fd import FdLink

pytestmark = pytest.mark.root

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"


async def sha_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    h = hashlib.sha256()
    while data := await reader.read(1 << 20):
        h.update(data)
    writer.write(h.digest())
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
def test_kernel_to_ustack_bulk_with_offloads(netns, run, offload):
    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", offload=offload) as stack:
            await stack.start_server(sha_sink, port=9)
            data = os.urandom(8 << 20)
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (USTACK, 9))
            await loop.sock_sendall(s, data)
            s.shutdown(socket.SHUT_WR)
            digest = await asyncio.wait_for(loop.sock_recv(s, 100), 30)
            s.close()
            assert digest == hashlib.sha256(data).digest()
            gso = stack.link.stats["rx_gso"]
            segs = stack.counters["TcpInSegs"]
            if offload:
                # the kernel sent super-segments: far fewer packets than MSS-sized segments
                assert gso > 0 and segs < (8 << 20) // 1448 // 4, (gso, segs)
            else:
                assert gso == 0 and segs >= (8 << 20) // 1448, (gso, segs)
            assert stack.counters["TcpInCsumErrors"] == 0
    run(main(), timeout=60)


def test_echo_both_ways_with_offloads(netns, run):
    """An echo with offloads on: ustack's own packets go out behind plain virtio headers."""
    from ustack.demo import echo_handler

    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", offload=True) as stack:
            await stack.start_server(echo_handler, port=7)
            data = os.urandom(4 << 20)
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (USTACK, 7))

            async def send():
                await loop.sock_sendall(s, data)
                s.shutdown(socket.SHUT_WR)
            task = asyncio.create_task(send())
            got = bytearray()
            while chunk := await loop.sock_recv(s, 1 << 18):
                got += chunk
            await task
            s.close()
            assert bytes(got) == data
    run(main(), timeout=60)


def test_vnet_link_reads_headers_and_writes_them():
    """FdLink with virtio-net headers: what a header says reaches on_packets as (checksum
    partial, gso_size); what ustack writes gets an empty header in front."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = FdLink(a.fileno(), vnet_hdr=True, close_fd=False)
    got = []

    loop = asyncio.new_event_loop()
    link.start(loop, lambda packets, meta: got.append((packets, meta)))
    b.send(bytes(10) + b"plain")
    b.send(bytes([1, 1, 52, 0, 0x88, 0x05, 20, 0, 16, 0]) + b"super")   # NEEDS_CSUM, TCPV4
    b.send(bytes([1, 0, 0, 0, 0, 0, 20, 0, 16, 0]) + b"partial")
    b.send(b"short")                                                     # no room for a header
    link._on_readable()
    assert got == [([b"plain", b"super", b"partial"], [None, (True, 1416), (True, 0)])]
    assert link.stats["rx_gso"] == 1 and link.stats["rx_errors"] == 1
    link.send(b"out")
    assert b.recv(100) == bytes(10) + b"out"
    link.close()
    loop.close()
    a.close()
    b.close()


def test_core_takes_a_super_segment_whole():
    """A 10-segment super-segment with a partial checksum: queued whole, rcv_mss learnt from
    gso_size (not the super-segment's length), one TcpInSegs, one ACK for all of it."""
    t = Trace()
    conn, rec, _ = t.passive_open()
    payload = os.urandom(14480)
    from ustack.wire import build_tcp, ip_to_int
    pkt = bytearray(build_tcp(ip_to_int("198.18.0.1"), ip_to_int("198.18.0.2"), 40000, 80,
                              1001, conn.snd_nxt, ACK | PSH, 502, payload, ts_val=102,
                              ts_ecr=conn.ts_recent))
    pkt[36] ^= 0xFF                               # a partial checksum is not a valid one
    before = t.mib["TcpInSegs"]
    t.host.receive(bytes(pkt))                    # without the link's word: a bad checksum
    assert t.mib["TcpInCsumErrors"] == 1 and not rec.data
    t.host.receive(bytes(pkt), csum_partial=True, gso_size=1448)
    assert bytes(rec.data) == payload
    assert t.mib["TcpInSegs"] - before == 2
    assert conn.rcv_mss == 1448
    acks = t.output()
    assert len(acks) == 1 and acks[0].ack == 1001 + len(payload)


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
def test_ustack_to_kernel_bulk_with_tso(netns, run, offload):
    """ustack sends its bursts as super-segments (TSO); the kernel cuts or takes them whole,
    and the bytes arrive exact.  TcpOutSegs still counts MSS segments, as Linux counts."""
    data = os.urandom(8 << 20)

    async def source(reader, writer):
        for i in range(0, len(data), 1 << 20):
            writer.write(data[i:i + (1 << 20)])
            await writer.drain()
        writer.write_eof()
        await reader.read()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", offload=offload) as stack:
            await stack.start_server(source, port=19)
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (USTACK, 19))
            h = hashlib.sha256()
            n = 0
            while chunk := await asyncio.wait_for(loop.sock_recv(s, 1 << 20), 30):
                h.update(chunk)
                n += len(chunk)
            s.close()
            assert n == len(data) and h.digest() == hashlib.sha256(data).digest()
            packets = stack.link.stats["tx_packets"]
            segs = stack.counters["TcpOutSegs"]
            assert segs >= len(data) // 1448
            if offload:
                assert packets < segs // 4, (packets, segs)
            else:
                assert packets >= segs - 5, (packets, segs)
    run(main(), timeout=60)
