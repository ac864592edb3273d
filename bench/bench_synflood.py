"""A spoofed SYN flood against a listener while a real client connects: ustack next to the
kernel's own listener, under the same flood, in the same run.

    sudo .venv/bin/python bench/bench_synflood.py [--syns 100000] [--seconds 15]
        [--connections 200] [--backlog 128] [--json bench_synflood.json]

Each side runs in a private namespace of its own.  A raw socket sends --syns SYNs from random
198.19.x.y sources (inside 198.18.0.0/15) at an even rate over --seconds; meanwhile a kernel
client makes --connections real connections (connect, 1 KB each way, close), one after the
other, and the time of each connect() is recorded.

  * ustack: the listener is ustack's, on a TUN device (198.18.0.2); its SYN-ACKs to the
    spoofed sources return to the kernel, which drops them (no forwarding).
  * kernel: the listener is the kernel's (198.18.0.1 in its namespace); the flood is written
    into its TUN device as if it came from the network (198.19.0.0/16 is routed to the device),
    and nobody reads the device, so its SYN-ACKs go nowhere.

Reported per side: connect time p50/p99 (ms), the most half-open connections seen, SYN cookies
sent, and (ustack) the process's RSS growth.  Ratios: ustack p99 / kernel p99 (target <= 2),
RSS growth (target < 64 MB).  The bench never gates CI.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ustack import Stack  # noqa: E402
from ustack.netns import Netns, iproute, kernel_sockets, setup_tun  # noqa: E402
from ustack.netns import kernel_counters as kernel_mib  # noqa: E402
from ustack.wire import build_tcp, ip_to_int  # noqa: E402

KERNEL, USTACK = "198.18.0.1", "198.18.0.2"
PORT = 80


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def kernel_half_open() -> int:
    return sum(1 for _l, _r, state in kernel_sockets() if state == "SYN-RECV")


async def flood(target: str, syns: int, seconds: float, stop: asyncio.Event,
                tun_fd: int | None = None) -> int:
    """SYNs at an even rate: through a raw socket (to ustack, via the kernel and the device),
    or written into a TUN device (to the kernel, as if from the network)."""
    rng = random.Random(7)
    dst = ip_to_int(target)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setblocking(False)
    if tun_fd is not None:
        def send(p: bytes) -> None:
            os.write(tun_fd, p)
    else:
        def send(p: bytes) -> None:
            raw.sendto(p, (target, 0))
    sent = 0
    start = time.perf_counter()
    try:
        while sent < syns and not stop.is_set():
            due = int((time.perf_counter() - start) / seconds * syns) + 1
            while sent < min(due, syns):
                src = ip_to_int("198.19.0.0") | rng.randrange(1, 65534)
                p = build_tcp(src, dst, rng.randrange(1024, 65535), PORT, rng.getrandbits(32),
                              0, 0x02, 64240, mss=1460, sack_ok=True, wscale=7,
                              ts_val=rng.getrandbits(32), ts_ecr=0)
                try:
                    send(p)
                except (BlockingIOError, OSError):
                    pass
                sent += 1
            await asyncio.sleep(0.002)
    finally:
        raw.close()
    return sent


async def clients(target: str, n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            t0 = time.perf_counter()
            await asyncio.wait_for(loop.sock_connect(s, (target, PORT)), 30)
            times.append((time.perf_counter() - t0) * 1000)
            await loop.sock_sendall(s, b"x" * 1024)
            got = 0
            while got < 1024:
                chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), 30)
                if not chunk:
                    break
                got += len(chunk)
        except (OSError, asyncio.TimeoutError):
            times.append(float("inf"))
        finally:
            s.close()
    return times


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        data = await reader.readexactly(1024)
        writer.write(data)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    most = 0
    rss0 = rss_mb()
    if side == "ustack":
        stack = Stack.tun("ust0", USTACK, f"{KERNEL}/24")
        await stack.start()
        await stack.start_server(echo, port=PORT, backlog=args.backlog)
        target = USTACK

        def half_open() -> int:
            return len(stack.host.reqs)
    else:
        device = setup_tun("ust0", f"{KERNEL}/24")        # the kernel's address; no reader

        def route(ipr: Any) -> None:
            (index,) = ipr.link_lookup(ifname=device.name)
            ipr.route("add", dst="198.19.0.0/16", oif=index)
        iproute(route)
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((KERNEL, PORT))
        ls.listen(args.backlog)
        ls.setblocking(False)
        loop = asyncio.get_running_loop()

        async def serve() -> None:
            while True:
                c, _ = await loop.sock_accept(ls)
                c.setblocking(False)

                async def one(c: socket.socket) -> None:
                    try:
                        got = b""
                        while len(got) < 1024:
                            chunk = await loop.sock_recv(c, 4096)
                            if not chunk:
                                break
                            got += chunk
                        await loop.sock_sendall(c, got)
                    except OSError:
                        pass
                    finally:
                        c.close()
                asyncio.ensure_future(one(c))
        server = asyncio.ensure_future(serve())
        target = KERNEL
        half_open = kernel_half_open
    mib0 = kernel_mib() if side == "kernel" else None

    async def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, half_open())
            await asyncio.sleep(0.05)
    watcher = asyncio.ensure_future(watch())
    flooding = asyncio.ensure_future(flood(target, args.syns, args.seconds, stop,
                                           None if side == "ustack" else device.fileno()))
    times = await clients(target, args.connections)
    sent = await flooding
    stop.set()
    await watcher
    rss1 = rss_mb()
    if side == "ustack":
        cookies = stack.counters["TcpExtSyncookiesSent"]
        await stack.aclose()
    else:
        cookies = kernel_mib()["TcpExtSyncookiesSent"] - mib0["TcpExtSyncookiesSent"]
        server.cancel()
        ls.close()
        device.close()
    ok = sorted(t for t in times if t != float("inf"))
    return {
        "syns_sent": sent, "connections": len(times), "failed": len(times) - len(ok),
        "connect_ms_p50": ok[len(ok) // 2] if ok else None,
        "connect_ms_p99": ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else None,
        "most_half_open": most, "syncookies_sent": cookies,
        "rss_growth_mb": round(rss1 - rss0, 1) if side == "ustack" else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--syns", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--backlog", type=int, default=128)
    p.add_argument("--json", default="bench_synflood.json")
    args = p.parse_args()
    import uvloop
    results: dict[str, Any] = {"args": vars(args)}
    for side in ("kernel", "ustack"):
        with Netns():
            results[side] = uvloop.run(run_side(side, args))
        r = results[side]
        print(f"{side:<7} connect p50 {r['connect_ms_p50']:.2f} ms  p99 {r['connect_ms_p99']:.2f} ms"
              f"  failed {r['failed']}  most half-open {r['most_half_open']}  cookies "
              f"{r['syncookies_sent']}  SYNs sent {r['syns_sent']}"
              + (f"  RSS +{r['rss_growth_mb']} MB" if r["rss_growth_mb"] is not None else ""),
              flush=True)
    k, u = results["kernel"], results["ustack"]
    if k["connect_ms_p99"] and u["connect_ms_p99"]:
        results["ratio_p99"] = u["connect_ms_p99"] / k["connect_ms_p99"]
        print(f"p99 connect ratio ustack/kernel: {results['ratio_p99']:.2f} (target <= 2); "
              f"RSS growth {u['rss_growth_mb']} MB (target < 64)")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
