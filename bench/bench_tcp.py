"""ustack throughput and connection-rate benchmark, as ratios against references in the same run.

    sudo .venv/bin/python bench/bench_tcp.py [--megabytes 50] [--connections 500] [--loop uvloop]
                                             [--json results.json]

Everything runs in a private network namespace (removed at the end).  Measured:
  * raw TUN ceiling: how many packets per second this Python process can move through a TUN
    device with no TCP at all (the kernel blasts UDP into the device; we read and count) —
    the upper bound for any userspace stack here;
  * kernel TCP over loopback in the same namespace: the kernel's own speed (reference);
  * ustack: bulk receive (kernel client -> ustack discard server) and bulk send (ustack
    source -> kernel client) in MB/s, each with the TUN device's offloads (virtio-net
    headers, checksum and TSO: super-segments both ways) and without, and short connections
    per second, each next to its reference as a ratio.
Benchmarks never gate CI; targets live in the README of bench/.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ustack import Stack  # noqa: E402
from ustack.netns import Netns  # noqa: E402

KERNEL, USTACK = "198.18.0.1", "198.18.0.2"


async def raw_tun_ceiling(seconds: float = 1.0) -> float:
    """Packets per second read from the TUN device by this process (UDP from the kernel)."""
    loop = asyncio.get_running_loop()
    counted = 0

    class Counter:
        def __init__(self) -> None:
            self.n = 0

    c = Counter()
    stack = Stack.tun("ust0", USTACK, f"{KERNEL}/24")
    await stack.start()
    link = stack.link
    link._on_packets = lambda pkts: setattr(c, "n", c.n + len(pkts))  # count, no TCP/IP
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    payload = b"x" * 1400
    end = loop.time() + seconds
    sent = 0
    while loop.time() < end:
        for _ in range(64):
            try:
                s.sendto(payload, (USTACK, 9))
                sent += 1
            except BlockingIOError:
                break
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    counted = c.n
    s.close()
    await stack.aclose()
    return counted / seconds


async def kernel_bulk(megabytes: int) -> float:
    """Kernel-to-kernel TCP over loopback: MB/s."""
    loop = asyncio.get_running_loop()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    ls.setblocking(False)
    port = ls.getsockname()[1]
    size = megabytes * 1_000_000

    async def sink() -> None:
        conn, _ = await loop.sock_accept(ls)
        n = 0
        while True:
            d = await loop.sock_recv(conn, 1 << 18)
            if not d:
                break
            n += len(d)
        conn.close()
    task = asyncio.create_task(sink())
    c = socket.socket()
    c.setblocking(False)
    await loop.sock_connect(c, ("127.0.0.1", port))
    block = b"k" * (1 << 16)
    t0 = time.perf_counter()
    left = size
    while left > 0:
        await loop.sock_sendall(c, block[:min(left, len(block))])
        left -= len(block)
    c.close()
    await task
    ls.close()
    return megabytes / (time.perf_counter() - t0)


async def kernel_conn_rate(n: int) -> float:
    loop = asyncio.get_running_loop()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1024)
    ls.setblocking(False)
    port = ls.getsockname()[1]

    async def acceptor() -> None:
        for _ in range(n):
            conn, _ = await loop.sock_accept(ls)
            await loop.sock_sendall(conn, b"ok")
            conn.close()
    task = asyncio.create_task(acceptor())
    t0 = time.perf_counter()
    for _ in range(n):
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, ("127.0.0.1", port))
        await loop.sock_recv(c, 10)
        c.close()
    await task
    ls.close()
    return n / (time.perf_counter() - t0)


async def ustack_send(megabytes: int, offload: bool) -> float:
    """ustack -> kernel: a ustack server writes `megabytes`, a kernel client reads. MB/s."""
    loop = asyncio.get_running_loop()
    size = megabytes * 1_000_000
    block = b"s" * (1 << 16)

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        left = size
        while left > 0:
            writer.write(block[:min(left, len(block))])
            left -= len(block)
            await writer.drain()
        writer.close()

    async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", offload=offload) as stack:
        await stack.start_server(source, port=19)
        c = socket.socket()
        c.setblocking(False)
        t0 = time.perf_counter()
        await loop.sock_connect(c, (USTACK, 19))
        got = 0
        while chunk := await loop.sock_recv(c, 1 << 20):
            got += len(chunk)
        dt = time.perf_counter() - t0
        c.close()
    if got != size:
        raise RuntimeError(f"ustack sent {got} bytes of {size}")
    return megabytes / dt


async def ustack_bulk_and_rate(megabytes: int, n: int,
                               offload: bool = False) -> tuple[float, float, float]:
    loop = asyncio.get_running_loop()
    async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", offload=offload,
                         sysctl={"ustack.tcp_timewait_len": 5}) as stack:
        async def discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(1 << 16):
                pass
            writer.close()

        async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"ok")
            writer.close()
        await stack.start_server(discard, port=9)
        await stack.start_server(hello, port=80)
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, (USTACK, 9))
        block = b"u" * (1 << 16)
        size = megabytes * 1_000_000
        segs0 = stack.counters["TcpInSegs"]
        t0 = time.perf_counter()
        left = size
        while left > 0:
            await loop.sock_sendall(c, block[:min(left, len(block))])
            left -= len(block)
        c.shutdown(socket.SHUT_WR)
        await loop.sock_recv(c, 10)  # EOF once ustack closed: everything was received
        dt = time.perf_counter() - t0
        c.close()
        pps = (stack.counters["TcpInSegs"] - segs0) / dt
        t0 = time.perf_counter()
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (USTACK, 80))
            while await loop.sock_recv(s, 10):
                pass
            s.close()
        rate = n / (time.perf_counter() - t0)
    return megabytes / dt, pps, rate


def progress(what: str) -> None:
    print(f"  ... {what}", file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> None:
    progress("raw TUN ceiling")
    ceiling = await raw_tun_ceiling()
    progress("kernel loopback")
    kbulk = await kernel_bulk(args.megabytes)
    krate = await kernel_conn_rate(args.connections)
    progress("ustack receive and connections, no offloads")
    ubulk, upps, urate = await ustack_bulk_and_rate(args.megabytes, args.connections)
    progress("ustack receive, offloads")
    obulk, opps, _ = await ustack_bulk_and_rate(args.megabytes, 1, offload=True)
    progress("ustack send, no offloads / offloads")
    usend = await ustack_send(args.megabytes, False)
    osend = await ustack_send(args.megabytes, True)
    print(f"raw TUN ceiling (UDP 1400 B into the device, read here): {ceiling:,.0f} packets/s")
    print(f"kernel TCP loopback: {kbulk:,.0f} MB/s; {krate:,.0f} connections/s")
    print(f"ustack bulk receive: {ubulk:,.1f} MB/s, {upps:,.0f} segments/s "
          f"= {upps / ceiling:.2f} x the raw TUN ceiling, {ubulk / kbulk:.3f} x the kernel")
    print(f"ustack bulk receive, offloads: {obulk:,.1f} MB/s ({opps:,.0f} packets/s) "
          f"= {obulk / kbulk:.3f} x the kernel, {obulk / ubulk:.1f} x without")
    print(f"ustack bulk send: {usend:,.1f} MB/s = {usend / kbulk:.3f} x the kernel; "
          f"offloads: {osend:,.1f} MB/s = {osend / kbulk:.3f} x the kernel, "
          f"{osend / usend:.1f} x without")
    print(f"ustack short connections: {urate:,.0f}/s = {urate / krate:.2f} x the kernel")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"raw_tun_pps": ceiling, "kernel_mbps": kbulk, "kernel_conn_s": krate,
                       "recv_mbps": ubulk, "recv_pps": upps, "recv_offload_mbps": obulk,
                       "send_mbps": usend, "send_offload_mbps": osend, "conn_s": urate,
                       "megabytes": args.megabytes, "loop": args.loop}, f, indent=1)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=int, default=50)
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = p.parse_args()
    with Netns():
        if a.loop == "uvloop":
            import uvloop
            uvloop.run(main(a))
        else:
            asyncio.run(main(a))
