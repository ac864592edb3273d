"""Bulk transfer under loss, reordering, duplication and corruption: ustack next to the kernel,
both through the same impairing relay (ustack.link.impair), in the same run.

    sudo .venv/bin/python bench/bench_loss.py [--megabytes 20] [--timeout 120]
        [--cases clean,loss1,...] [--json bench_loss.json] [--loop uvloop]

For each case, three timed transfers of --megabytes (10**6 bytes each), each in namespaces of
its own that are removed at the end:

  * kernel sender (the reference): kernel in namespace A -> relay -> kernel in namespace B
    (ustack.link.impair.KernelPair: two TUN devices, the relay between them);
  * ustack sender: ustack (on an ImpairedLink over a TUN device) -> the kernel of its namespace;
  * ustack receiver: the kernel -> ustack, same set-up.

A transfer's time runs from connect() until the receiving application holds every byte
(checked by SHA-256 afterwards); closing is not timed.  The relay's impairment is the same
Impairment (same parameters and seeds) in every transfer of a case.  The relay is Python on the
same event loop as everything else: with ustack it shares the loop with ustack, with the two
kernels it has the loop to itself.  A transfer that is not done within --timeout seconds is
reported as "timeout" (with the bytes that had arrived) and the bench goes on.  Ratios are
time(ustack) / time(kernel sender); the target is <= 2.  Benchmarks never gate CI.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ustack.link.impair import Impairment, KernelPair, impaired_tun_stack, symmetric  # noqa: E402
from ustack.netns import Netns  # noqa: E402
from ustack.netns import kernel_counters as kernel_mib  # noqa: E402

KERNEL, USTACK = "198.18.0.1", "198.18.0.2"
PORT = 5001
SEED = 1000
CC = "cubic"      # the congestion control of every sender (--cc): the kernel's by TCP_CONGESTION

CASES: dict[str, dict[str, Any]] = {
    "clean": {},
    "loss1": dict(loss=0.01),
    "loss5": dict(loss=0.05),
    "reorder25": dict(reorder=0.25),
    "dup5": dict(duplicate=0.05),
    "corrupt1": dict(corrupt=0.01),
    "all": dict(loss=0.01, reorder=0.25, duplicate=0.05, corrupt=0.01, delay_ms=1.0,
                jitter_ms=0.5),
}


class Receiver:
    """Collects a transfer's bytes; `done` once all have arrived."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: list[bytes] = []
        self.n = 0
        self.done = asyncio.get_running_loop().create_future()
        self.t_done = 0.0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.n += len(chunk)
        if self.n >= self.size and not self.done.done():
            self.t_done = time.perf_counter()
            self.done.set_result(None)

    def finish(self) -> None:
        """All bytes are in (counted and stamped by a reader thread)."""
        if not self.done.done():
            self.done.set_result(None)

    def digest(self) -> str:
        return hashlib.sha256(b"".join(self.chunks)).hexdigest()


async def kernel_recv_into(loop: asyncio.AbstractEventLoop, s: socket.socket, rx: Receiver) -> None:
    """The kernel-side receiving application, reading in a thread of its own: an application
    that waits for the busy event loop (ustack, the relay) lets the kernel's receive queue grow,
    and a kernel receiver whose window does not advance delays its ACKs (__tcp_ack_snd_check),
    which would slow the sender for a reason that is not the sender's."""
    s.settimeout(0.2)
    stop = [False]

    def reader() -> None:
        while not stop[0]:
            try:
                chunk = s.recv(1 << 18)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            rx.chunks.append(chunk)
            rx.n += len(chunk)
            if rx.n >= rx.size:
                rx.t_done = time.perf_counter()
                loop.call_soon_threadsafe(rx.finish)
                return
    try:
        await asyncio.to_thread(reader)
    finally:
        stop[0] = True


async def timed(work: Callable[[], Awaitable[None]], rx: Receiver, t0_box: list[float],
                limit: float) -> dict[str, Any]:
    """Run `work` (which starts the clock in t0_box) until rx is complete, `work` fails, or
    `limit` seconds pass."""
    task = asyncio.ensure_future(work())
    try:
        await asyncio.wait({rx.done, task}, timeout=limit,
                           return_when=asyncio.FIRST_COMPLETED)
        if rx.done.done():
            return {"status": "ok", "seconds": rx.t_done - t0_box[0], "bytes_received": rx.n}
        if task.done() and task.exception() is not None:
            return {"status": "error", "error": repr(task.exception()), "seconds": None,
                    "bytes_received": rx.n}
        return {"status": "timeout", "seconds": None, "bytes_received": rx.n}
    finally:
        task.cancel()
        try:
            await task
        except BaseException:
            pass


async def kernel_to_kernel(params: dict[str, Any], data: bytes, limit: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    a_to_b, b_to_a = symmetric(SEED, **params)
    async with KernelPair(a_to_b=a_to_b, b_to_a=b_to_a) as pair:
        with pair.entered("a"):
            mib0 = kernel_mib()
        ls = pair.socket("b")
        ls.bind((pair.b_address, PORT))
        ls.listen()
        c = pair.socket("a")
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, CC.encode())
        rx = Receiver(len(data))
        t0 = [0.0]
        socks = [ls, c]

        async def work() -> None:
            t0[0] = time.perf_counter()
            await loop.sock_connect(c, (pair.b_address, PORT))
            ks, _ = await loop.sock_accept(ls)
            ks.setblocking(False)
            socks.append(ks)
            reader = asyncio.ensure_future(kernel_recv_into(loop, ks, rx))
            try:
                await loop.sock_sendall(c, data)
                await reader
            finally:
                reader.cancel()
        try:
            result = await timed(work, rx, t0, limit)
        finally:
            for s in socks:
                s.close()
        with pair.entered("a"):
            mib1 = kernel_mib()
        result["retransmitted_segments"] = mib1["TcpRetransSegs"] - mib0["TcpRetransSegs"]
        result["link"] = pair.relay.stats  # type: ignore[union-attr]
    result["intact"] = result["status"] == "ok" and rx.digest() == hashlib.sha256(data).hexdigest()
    return result


async def ustack_to_kernel(params: dict[str, Any], data: bytes, limit: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    to_kernel, from_kernel = symmetric(SEED, **params)
    stack = impaired_tun_stack("ust0", USTACK, f"{KERNEL}/24", to_kernel=to_kernel,
                               from_kernel=from_kernel,
                               sysctl={"net.ipv4.tcp_congestion_control": CC})
    async with stack:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((KERNEL, PORT))
        ls.listen()
        ls.setblocking(False)
        rx = Receiver(len(data))
        t0 = [0.0]
        socks = [ls]

        async def work() -> None:
            t0[0] = time.perf_counter()
            reader, writer = await stack.open_connection(KERNEL, PORT)
            ks, _ = await loop.sock_accept(ls)
            ks.setblocking(False)
            socks.append(ks)
            task = asyncio.ensure_future(kernel_recv_into(loop, ks, rx))
            try:
                writer.write(data)
                await writer.drain()
                await task
            finally:
                task.cancel()
        try:
            result = await timed(work, rx, t0, limit)
        finally:
            for s in socks:
                s.close()
        result["retransmitted_segments"] = stack.counters["TcpRetransSegs"]
        result["link"] = {"ustack->kernel": stack.link.impair_stats["out"],
                          "kernel->ustack": stack.link.impair_stats["in"]}
    result["intact"] = result["status"] == "ok" and rx.digest() == hashlib.sha256(data).hexdigest()
    return result


async def kernel_to_ustack(params: dict[str, Any], data: bytes, limit: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    to_kernel, from_kernel = symmetric(SEED, **params)
    rx = Receiver(len(data))

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(1 << 18):
            rx.add(chunk)
        writer.close()

    stack = impaired_tun_stack("ust0", USTACK, f"{KERNEL}/24", to_kernel=to_kernel,
                               from_kernel=from_kernel)
    async with stack:
        await stack.start_server(sink, port=PORT)
        mib0 = kernel_mib()
        c = socket.socket()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, CC.encode())
        c.setblocking(False)
        t0 = [0.0]

        async def work() -> None:
            t0[0] = time.perf_counter()
            await loop.sock_connect(c, (USTACK, PORT))
            await loop.sock_sendall(c, data)
            await asyncio.Future()  # until rx is complete
        try:
            result = await timed(work, rx, t0, limit)
        finally:
            c.close()
        result["retransmitted_segments"] = kernel_mib()["TcpRetransSegs"] - mib0["TcpRetransSegs"]
        result["link"] = {"kernel->ustack": stack.link.impair_stats["in"],
                          "ustack->kernel": stack.link.impair_stats["out"]}
    result["intact"] = result["status"] == "ok" and rx.digest() == hashlib.sha256(data).hexdigest()
    return result


def run_one(fn: Callable[..., Awaitable[dict[str, Any]]], params: dict[str, Any], data: bytes,
            limit: float, loop_kind: str) -> dict[str, Any]:
    """One transfer on a fresh event loop, with the thread in a fresh private namespace."""
    async def bounded() -> dict[str, Any]:
        # The transfer is bounded inside; this outer bound only guards set-up and teardown.
        return await asyncio.wait_for(fn(params, data, limit), limit + 60)
    with Netns():
        if loop_kind == "uvloop":
            import uvloop
            return uvloop.run(bounded())
        return asyncio.run(bounded())


def fmt_time(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['status']} ({r['bytes_received'] / 1e6:.1f} MB in)"
    return f"{r['seconds']:.2f} s" + ("" if r["intact"] else " CORRUPT")


def ratio(r: dict[str, Any], ref: dict[str, Any]) -> float | None:
    if r["status"] != "ok" or ref["status"] != "ok" or not ref["seconds"]:
        return None
    return r["seconds"] / ref["seconds"]


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=float, default=20.0, help="per transfer (10**6 bytes)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per transfer")
    p.add_argument("--cases", default=",".join(CASES), help=f"from {','.join(CASES)}")
    p.add_argument("--json", default="bench_loss.json", help="where to write the results")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--cc", choices=("cubic", "reno"), default="cubic",
                   help="congestion control of both senders (default cubic, Linux's default; "
                        "a namespace inherits the host's, which may be bbr)")
    args = p.parse_args()
    global CC
    CC = args.cc
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    data = os.urandom(int(args.megabytes * 1_000_000))

    results: dict[str, Any] = {
        "megabytes": args.megabytes, "timeout_s": args.timeout, "loop": args.loop,
        "congestion_control": args.cc,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cases": {},
    }
    print(f"{args.megabytes:g} MB per transfer, limit {args.timeout:g} s, {args.loop}, "
          f"{args.cc} on both senders; each direction of the link:")
    for name in cases:
        print(f"  {name:<10} {Impairment(**CASES[name]).describe()}")
    header = (f"{'case':<10} {'kernel->kernel':>15} {'ustack->kernel':>24} "
              f"{'ratio':>7} {'kernel->ustack':>24} {'ratio':>7}")
    print(header)
    print("-" * len(header))
    for name in cases:
        params = CASES[name]
        desc = Impairment(**params).describe()
        ref = run_one(kernel_to_kernel, params, data, args.timeout, args.loop)
        snd = run_one(ustack_to_kernel, params, data, args.timeout, args.loop)
        rcv = run_one(kernel_to_ustack, params, data, args.timeout, args.loop)
        r_snd, r_rcv = ratio(snd, ref), ratio(rcv, ref)
        results["cases"][name] = {
            "impairment": {"description": desc, **params, "seeds": [SEED, SEED + 1]},
            "kernel_sender": ref, "ustack_sender": snd, "ustack_receiver": rcv,
            "ratio_ustack_sender": r_snd, "ratio_ustack_receiver": r_rcv,
            "target_ratio": 2.0,
        }
        print(f"{name:<10} {fmt_time(ref):>15} {fmt_time(snd):>24} "
              f"{fmt_ratio(r_snd):>7} {fmt_time(rcv):>24} {fmt_ratio(r_rcv):>7}", flush=True)
        with open(args.json, "w") as f:  # after every case: a timeout later loses nothing
            json.dump(results, f, indent=2)
    print(f"ratio = time(ustack) / time(kernel sender) through the same relay; target <= 2. "
          f"JSON: {args.json}")


if __name__ == "__main__":
    main()
