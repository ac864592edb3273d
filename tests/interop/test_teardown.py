"""Who ends in TIME-WAIT, checked on both sides: ustack's table and the kernel's own view of its
sockets in the namespace (/proc/thread-self/net/tcp)."""
from __future__ import annotations

import asyncio
import socket

import pytest

from ustack import Stack
from ustack.aio import run_until
from tests.interop.kernel import kernel_sockets

pytestmark = pytest.mark.root

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"

def test_kernel_closes_first_kernel_holds_time_wait(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack:
            async def handler(reader, writer):
                assert await reader.read() == b""          # the kernel's FIN
                seen.extend(c.state for c in stack.connections() if c.remote[1])
                writer.close()
            await stack.start_server(handler, port=80)
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (USTACK, 80))
            kport = s.getsockname()[1]
            s.shutdown(socket.SHUT_WR)                      # the kernel sends the first FIN
            assert await loop.sock_recv(s, 10) == b""       # ustack's FIN
            s.close()
            assert await run_until(lambda: not [c for c in stack.connections() if c.remote[1]])
            assert seen == ["CLOSE-WAIT"]
            assert (kport, 80, "TIME-WAIT") in kernel_sockets()
            assert stack.counters["TW"] == 0
    run(main())


def test_ustack_closes_first_kernel_ends_closed(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack:
            ls = socket.socket()
            ls.bind((KERNEL, 9000))
            ls.listen()
            ls.setblocking(False)
            reader, writer = await stack.open_connection(KERNEL, 9000)
            ks, _ = await loop.sock_accept(ls)
            ks.setblocking(False)
            writer.close()                                  # ustack sends the first FIN
            assert await loop.sock_recv(ks, 10) == b""
            kport = writer.get_extra_info("sockname")[1]
            assert (9000, kport, "CLOSE-WAIT") in kernel_sockets()
            ks.close()                                      # the kernel: LAST-ACK -> CLOSED
            assert await run_until(lambda: [c.state for c in stack.connections()
                                            if c.remote[1]] == ["TIME-WAIT"])
            assert await run_until(lambda: not [k for k in kernel_sockets() if k[1] == kport])
            assert stack.counters["TW"] == 1
            ls.close()
    run(main())


def test_thousand_short_connections_leave_time_wait_records_that_expire(netns, run):
    """1,000 connections closed first by ustack: 1,000 TIME-WAIT records, gone after
    ustack.tcp_timewait_len (3 s here), none on the kernel side."""
    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24",
                             sysctl={"ustack.tcp_timewait_len": 3}) as stack:
            async def hello(reader, writer):
                writer.write(b"bye")
                writer.close()                              # ustack closes first
            await stack.start_server(hello, port=80, backlog=1000)

            async def one() -> bytes:
                s = socket.socket()
                s.setblocking(False)
                try:
                    await loop.sock_connect(s, (USTACK, 80))
                    data = b""
                    while chunk := await loop.sock_recv(s, 10):
                        data += chunk
                    return data
                finally:
                    s.close()
            for _ in range(10):
                assert await asyncio.gather(*(one() for _ in range(100))) == [b"bye"] * 100
            # Every connection made a record, counted at creation: a lifetime of at most
            # 4 s counts as TWKilled (__inet_twsk_schedule), 60 s as TW. Records from the
            # first batches may already be gone on a slow machine, so no time window is
            # asserted: each record's timer is at most the configured length, and the
            # records of the latest batch are still there.
            assert stack.counters["TWKilled"] == 1000 and stack.counters["TW"] == 0
            tws = [c for c in stack.connections() if c.state == "TIME-WAIT"]
            assert len(tws) >= 100 and len(tws) == len(stack.host.tw)
            assert all(c.timer[0] == "timewait" and 0 <= c.timer[1] <= 3000 for c in tws)
            assert not [k for k in kernel_sockets() if k[2] == "TIME-WAIT"]
            assert await run_until(lambda: len(stack.host.tw) == 0, timeout=15)
    run(main())
