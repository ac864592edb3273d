"""`ustack demo`: ustack on a real TUN device, driven by the Linux kernel with real sockets.

Everything happens in a private network namespace that disappears when the demo ends: the TUN
device (kernel side 198.18.0.1/24, ustack 198.18.0.2), an echo server and a small HTTP server on
ustack, and kernel-side clients — a ping, a few hundred short HTTP connections, a 100 MB echo
transfer — then ustack's connection table and counters.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time
from collections import Counter

from ustack import Stack
from ustack.netns import Netns
from ustack.wire import internet_checksum

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"


async def ping(loop: asyncio.AbstractEventLoop, dst: str, count: int = 3) -> list[float]:
    """ICMP echo from the kernel side through a raw socket (we are root in our namespace)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setblocking(False)
    rtts = []
    ident = os.getpid() & 0xFFFF
    try:
        for seq in range(count):
            body = struct.pack("!d", time.monotonic()) + b"ustack-ping" * 4
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            csum = internet_checksum(hdr + body)
            msg = struct.pack("!BBHHH", 8, 0, csum, ident, seq) + body
            t0 = time.monotonic()
            s.sendto(msg, (dst, 0))  # uvloop has no sock_sendto; a raw send does not block
            while True:
                data = await asyncio.wait_for(loop.sock_recv(s, 2048), 2.0)
                ihl = (data[0] & 0x0F) * 4
                icmp = data[ihl:]
                if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                    rtts.append((time.monotonic() - t0) * 1000)
                    break
    finally:
        s.close()
    return rtts


async def http_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    path = request.split(b" ", 2)[1].decode(errors="replace")
    body = f"hello from ustack, you asked for {path}\n".encode()
    writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    writer.close()  # the server closes first: its side ends in TIME-WAIT


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(1 << 16)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()


async def http_get(loop: asyncio.AbstractEventLoop, path: str) -> bytes:
    s = socket.socket()
    s.setblocking(False)
    try:
        await loop.sock_connect(s, (USTACK, 80))
        await loop.sock_sendall(s, f"GET {path} HTTP/1.0\r\nHost: ustack\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = await loop.sock_recv(s, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


async def bulk_echo(loop: asyncio.AbstractEventLoop, size: int) -> tuple[float, bool]:
    s = socket.socket()
    s.setblocking(False)
    block = os.urandom(1 << 16)
    sent_hash = hashlib.sha256()
    recv_hash = hashlib.sha256()
    try:
        await loop.sock_connect(s, (USTACK, 7))
        t0 = time.monotonic()

        async def sender() -> None:
            left = size
            while left:
                chunk = block[:min(left, len(block))]
                await loop.sock_sendall(s, chunk)
                sent_hash.update(chunk)
                left -= len(chunk)
            s.shutdown(socket.SHUT_WR)
        task = asyncio.create_task(sender())
        received = 0
        step = max(size // 4, 1)
        shown = step
        while True:
            chunk = await loop.sock_recv(s, 1 << 18)
            if not chunk:
                break
            recv_hash.update(chunk)
            received += len(chunk)
            if received >= shown and received < size:   # progress on the long transfer
                print(f"  echo: {received * 100 // size}% back "
                      f"({time.monotonic() - t0:.1f} s)", flush=True)
                shown += step
        await task
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    return elapsed, received == size and sent_hash.digest() == recv_hash.digest()


async def run_demo(connections: int = 300, megabytes: int = 100, offload: bool = True) -> int:
    loop = asyncio.get_running_loop()
    print(f"ustack demo: private network namespace, TUN device ust0, kernel {KERNEL}, "
          f"ustack {USTACK}")
    print(f"TUN offloads (checksum, TSO: super-segments both ways): "
          f"{'on' if offload else 'off'}")
    async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", offload=offload,
                         sysctl={"ustack.tcp_timewait_len": 60}) as stack:
        await stack.start_server(echo_handler, port=7)
        await stack.start_server(http_handler, port=80)

        rtts = await ping(loop, USTACK)
        print(f"ping {USTACK}: {len(rtts)}/3 replies, rtt "
              + " ".join(f"{r:.3f}" for r in rtts) + " ms")

        t0 = time.monotonic()
        ok = 0
        for batch in range(0, connections, 50):
            replies = await asyncio.gather(*(http_get(loop, f"/item/{i}")
                                             for i in range(batch, min(batch + 50,
                                                                       connections))))
            ok += sum(1 for r in replies if r.startswith(b"HTTP/1.0 200 OK"))
            if connections > 100 and batch + 50 < connections and (batch // 50) % 2 == 1:
                print(f"  HTTP: {batch + 50}/{connections} connections done", flush=True)
        dt = time.monotonic() - t0
        print(f"HTTP: {ok}/{connections} short connections answered in {dt:.2f} s "
              f"({connections / dt:.0f} conn/s)")

        elapsed, intact = await bulk_echo(loop, megabytes * 1_000_000)
        print(f"echo: {megabytes} MB to ustack and back in {elapsed:.2f} s: "
              f"{megabytes / elapsed:.1f} MB/s each way, data {'intact' if intact else 'CORRUPTED'}")
        await asyncio.sleep(0.1)

        conns = stack.connections()
        print("\nustack's sockets (ss -tan style): "
              + ", ".join(f"{n} {s}" for s, n in Counter(c.state for c in conns).items()))
        print(f"{'State':<11} {'Recv-Q':<6} {'Send-Q':<6} {'Local Address:Port':<21} "
              f"{'Peer Address:Port':<21} Timer")
        shown = [c for c in conns if c.state != "TIME-WAIT"] + \
            [c for c in conns if c.state == "TIME-WAIT"][:8]
        for c in shown:
            print(c)
        hidden = len(conns) - len(shown)
        if hidden:
            print(f"... and {hidden} more TIME-WAIT records")
        print("\nustack's counters (nstat names):")
        for name, value in stack.counters.nonzero().items():
            print(f"  {name:<28} {value}")
        success = len(rtts) == 3 and ok == connections and intact
    print("\nnamespace and TUN device removed." if success else "\ndemo FAILED")
    return 0 if success else 1


def main(connections: int = 300, megabytes: int = 100, use_uvloop: bool = True,
         offload: bool = True) -> int:
    with Netns():
        if use_uvloop:
            import uvloop
            return uvloop.run(run_demo(connections, megabytes, offload))
        return asyncio.run(run_demo(connections, megabytes, offload))
