"""A SYN flood with spoofed sources against ustack over TUN, while a kernel client makes real
connections: the half-open state stays bounded as Linux bounds it (request sockets up to the
listen backlog, then SYN cookies) and every real client is served.

The flood comes from a raw socket in the test's namespace: SYNs from 198.19.0.0/16 (inside
198.18.0.0/15) to ustack's address, routed into the TUN device like any packet for ustack.
ustack's SYN-ACKs to those addresses come back to the kernel, which has no route out and
drops them.  Loads are bounded in count; nothing is timed.
"""
from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

from ustack import Stack
from ustack.wire import build_tcp, ip_to_int

pytestmark = pytest.mark.root

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"


def spoofed_syns(count: int, port: int, seed: int = 1) -> list[bytes]:
    """IPv4 SYNs from random 198.19.x.y sources and ports (IP_HDRINCL packets)."""
    rng = random.Random(seed)
    dst = ip_to_int(USTACK)
    out = []
    for _ in range(count):
        src = ip_to_int("198.19.0.0") | rng.randrange(1, 65534)
        out.append(build_tcp(src, dst, rng.randrange(1024, 65535), port, rng.getrandbits(32),
                             0, 0x02, 64240, mss=1460, sack_ok=True, wscale=7,
                             ts_val=rng.getrandbits(32), ts_ecr=0))
    return out


async def flood(packets: list[bytes], batch: int = 200) -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for i in range(0, len(packets), batch):
            for p in packets[i:i + batch]:
                try:
                    raw.sendto(p, (USTACK, 0))
                except BlockingIOError:
                    pass
            await asyncio.sleep(0)          # let ustack read
    finally:
        raw.close()


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Not an echo: a reply of another length (an echo connection's late last ACK would pass
    as its cookie again, see test_kernel_client_over_syn_cookies)."""
    data = await reader.read(-1)
    writer.write(data[::-1] + b"+flood")
    await writer.drain()
    writer.close()


async def client(port: int) -> bool:
    loop = asyncio.get_running_loop()
    data = os.urandom(20_000)
    s = socket.socket()
    s.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(s, (USTACK, port)), 30)
        await loop.sock_sendall(s, data)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := await asyncio.wait_for(loop.sock_recv(s, 65536), 30):
            got += chunk
        return bytes(got) == data[::-1] + b"+flood"
    finally:
        s.close()


def test_syn_flood_keeps_half_open_bounded_and_serves_real_clients(netns, run):
    async def main():
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack:
            await stack.start_server(answer, port=80, backlog=64)
            packets = spoofed_syns(20_000, 80)
            most_half_open = 0

            async def watch() -> None:
                nonlocal most_half_open
                while True:
                    most_half_open = max(most_half_open, len(stack.host.reqs))
                    await asyncio.sleep(0.01)
            watcher = asyncio.create_task(watch())
            flooding = asyncio.create_task(flood(packets))
            results = []
            for _ in range(5):
                results += await asyncio.gather(*(client(80) for _ in range(10)))
            await flooding
            watcher.cancel()
            assert all(results) and len(results) == 50
            counters = stack.counters
            # the SYN queue never grows past the backlog: the rest got cookies
            assert most_half_open <= 65
            assert counters["TcpExtSyncookiesSent"] > 0
            assert counters["TcpExtTCPReqQFullDoCookies"] == counters["TcpExtSyncookiesSent"]
            assert counters["TcpPassiveOpens"] == 50
    run(main(), timeout=300)
