"""Taking over a TIME-WAIT 4-tuple, against the Linux kernel over a TUN device.

* ustack as server holds TIME-WAIT; the kernel client reconnects from the same port: the SYN
  is newer (ISN or TSval), tcp_timewait_state_process says TCP_TW_SYN, the record goes and a
  fresh connection is accepted (RFC 6191; RFC 9293 Appendix B without timestamps).
* ustack as client holds TIME-WAIT on every port of a narrow ip_local_port_range; connect()
  takes the records over with tcp_tw_reuse=1 after tcp_tw_reuse_delay (tcp_twsk_unique),
  never with tcp_tw_reuse=0 or 2 (loopback only): EADDRNOTAVAIL.
* ustack as client bound explicitly to a port (SO_REUSEADDR) reconnects over its own record:
  allowed with timestamps whatever tcp_tw_reuse says, refused without them.

In every case the kernel peer is in CLOSED for the old 4-tuple (it closed second), so whatever
it does with the new SYN is the listener's ordinary work; what is tested is ustack's side.
Kernel settings are written into the test's own namespace only (netns.sysctl).
"""
from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from ustack import Stack
from ustack.aio import run_until
from tests.interop.kernel import kernel_mib, kernel_sockets
from ustack.wire import ip_to_int

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"
KERNEL_CLIENT_PORT = 45000
SERVER_PORT = 9000
M32 = 0xFFFFFFFF

def delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def tw_records(stack: Stack) -> list[tuple[int, tuple[str, int], str | None]]:
    """(local port, remote, substate) of ustack's TIME-WAIT records."""
    return sorted((c.local[1], c.remote, c.substate) for c in stack.connections()
                  if c.state == "TIME-WAIT")


def tw_key(rport: int, lport: int, raddr: str = KERNEL) -> int:
    return (ip_to_int(raddr) << 32) | (rport << 16) | lport


async def recv_exactly(s: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < n:
        chunk = await loop.sock_recv(s, n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def recv_to_eof(s: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while chunk := await loop.sock_recv(s, 4096):
        got += chunk
    return bytes(got)


def kernel_listener(port: int = SERVER_PORT) -> socket.socket:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((KERNEL, port))
    ls.listen(16)
    ls.setblocking(False)
    return ls


async def ustack_client_session(stack: Stack, ls: socket.socket, tag: bytes, **kw):
    """ustack connects to the kernel server, data both ways, ustack closes first, the kernel
    closes second (it ends CLOSED, ustack in TIME-WAIT).  Returns ustack's local port."""
    loop = asyncio.get_running_loop()
    reader, writer = await stack.open_connection(KERNEL, SERVER_PORT, **kw)
    lport = writer.get_extra_info("sockname")[1]
    ks, peer = await asyncio.wait_for(loop.sock_accept(ls), 5)
    ks.setblocking(False)
    assert peer == (USTACK, lport)
    try:
        writer.write(b"up:" + tag)
        await writer.drain()
        assert await recv_exactly(ks, 3 + len(tag)) == b"up:" + tag
        await loop.sock_sendall(ks, b"down:" + tag)
        assert await asyncio.wait_for(reader.readexactly(5 + len(tag)), 5) == b"down:" + tag
        writer.close()                                   # ustack's FIN first
        assert await asyncio.wait_for(recv_to_eof(ks), 5) == b""
    finally:
        ks.close()                                       # the kernel: LAST-ACK -> CLOSED
    assert await asyncio.wait_for(reader.read(), 5) == b""
    return lport


async def wait_kernel_closed(lports: set[int]) -> None:
    """The kernel's accepted sockets for these ustack ports are gone (LAST-ACK -> CLOSED)."""
    assert await run_until(lambda: not [k for k in kernel_sockets()
                                        if k[0] == SERVER_PORT and k[1] in lports]), \
        kernel_sockets()


# ---------------------------------------------------------------------------------------------
# 1. ustack server in TIME-WAIT, kernel client reconnects from the same port

@pytest.mark.parametrize("kernel_ts", [1, 0], ids=["kernel-ts-on", "kernel-ts-off"])
def test_kernel_client_reconnect_takes_over_ustack_time_wait(netns, run, kernel_ts):
    netns.sysctl("net.ipv4.tcp_timestamps", kernel_ts)
    assert netns.read_sysctl("net.ipv4.tcp_timestamps") == str(kernel_ts)

    async def main():
        loop = asyncio.get_running_loop()
        handled: list[int] = []
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack:
            async def handler(reader, writer):
                handled.append(1)
                if len(handled) == 1:
                    assert await reader.readexactly(6) == b"hello1"
                    writer.write(b"first")
                    writer.close()                          # ustack closes first
                    return
                data = await reader.readexactly(6)
                writer.write(b"pong:" + data)
                await writer.drain()
                assert await reader.read() == b""           # the kernel's FIN
                writer.write(b"bye")
                writer.close()
            await stack.start_server(handler, port=80)

            def client() -> socket.socket:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((KERNEL, KERNEL_CLIENT_PORT))
                s.setblocking(False)
                return s

            # the first incarnation: ustack ends in TIME-WAIT, the kernel in CLOSED
            s = client()
            await loop.sock_connect(s, (USTACK, 80))
            await loop.sock_sendall(s, b"hello1")
            assert await asyncio.wait_for(recv_to_eof(s), 5) == b"first"
            s.close()
            assert await run_until(lambda: tw_records(stack) == [
                (80, (KERNEL, KERNEL_CLIENT_PORT), "TIME-WAIT")]), stack.connections()
            assert await run_until(lambda: not [k for k in kernel_sockets()
                                                if k[0] == KERNEL_CLIENT_PORT])
            record = stack.host.tw.get(tw_key(KERNEL_CLIENT_PORT, 80))
            assert record is not None
            assert record.ts_ok == bool(kernel_ts)          # timestamps as negotiated
            old_rcv_nxt = record.rcv_nxt
            kbefore = kernel_mib()
            ubefore = dict(stack.counters.values)

            # the second incarnation, same 4-tuple
            s = client()
            t0 = loop.time()
            await asyncio.wait_for(loop.sock_connect(s, (USTACK, 80)), 5)
            connect_time = loop.time() - t0
            await loop.sock_sendall(s, b"hello2")
            assert await asyncio.wait_for(recv_exactly(s, 11), 5) == b"pong:hello2"
            # the old record is gone, a new ESTAB connection holds the 4-tuple
            conns = [c for c in stack.connections() if c.remote == (KERNEL, KERNEL_CLIENT_PORT)]
            assert [c.state for c in conns] == ["ESTAB"], conns
            assert stack.host.tw.get(tw_key(KERNEL_CLIENT_PORT, 80)) is None
            assert len(stack.host.tw) == 0
            new = stack.host.conns[tw_key(KERNEL_CLIENT_PORT, 80)]
            # tcp_timewait_state_process's TCP_TW_SYN: the SYN was above the old rcv_nxt (or
            # its TSval newer), the new ISN is the record's snd_nxt + 65537
            assert ((new.irs - old_rcv_nxt) & M32) < 0x80000000 or kernel_ts
            assert new.iss == (record.snd_nxt + 65537) & M32
            # accepted at the first SYN: no ACK from the record, no RST, no SYN retransmission
            assert connect_time < 0.9, connect_time
            ucount = stack.counters.values
            for name in ("TcpExtPAWSTimewait", "TcpExtTCPACKSkippedTimeWait", "TcpOutRsts"):
                assert ucount.get(name, 0) == ubefore.get(name, 0), name
            assert ucount["TcpPassiveOpens"] == 2
            kafter = kernel_mib()
            assert delta(kbefore, kafter, "TcpExtTCPSynRetrans") == 0
            assert delta(kbefore, kafter, "TcpOutRsts") == 0
            assert delta(kbefore, kafter, "TcpAttemptFails") == 0
            # and the other direction once more, then the kernel closes first
            s.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(recv_to_eof(s), 5) == b"bye"
            s.close()
            assert await run_until(lambda: not [c for c in stack.connections()
                                                if c.remote[1] == KERNEL_CLIENT_PORT])
            assert len(handled) == 2
            assert len(stack.host.tw) == 0                  # the kernel closed first this time
    run(main(), timeout=30)


# ---------------------------------------------------------------------------------------------
# 2. ustack client, tcp_tw_reuse, a range of four local ports

PORT_RANGE = (40000, 40003)
ALL_PORTS = set(range(PORT_RANGE[0], PORT_RANGE[1] + 1))


async def fill_range_with_time_wait(stack: Stack, ls: socket.socket) -> list[int]:
    """One connection per local port, each closed first by ustack: four TIME-WAIT records."""
    ports = []
    for i in range(4):
        ports.append(await ustack_client_session(stack, ls, b"old%d" % i))
    assert set(ports) == ALL_PORTS, ports
    assert await run_until(lambda: tw_records(stack) == [
        (p, (KERNEL, SERVER_PORT), "TIME-WAIT") for p in sorted(ALL_PORTS)]), \
        stack.connections()
    await wait_kernel_closed(ALL_PORTS)
    return ports


def test_tw_reuse_1_takes_over_every_time_wait_port(netns, run):
    delay_ms = 1500

    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", sysctl={
                "net.ipv4.tcp_tw_reuse": 1,
                "net.ipv4.tcp_tw_reuse_delay": delay_ms,
                "net.ipv4.ip_local_port_range": "%d %d" % PORT_RANGE}) as stack:
            ls = kernel_listener()
            t_first = loop.time()
            await fill_range_with_time_wait(stack, ls)
            assert stack.counters["TWRecycled"] == 0
            old = {tw.lport: (tw.snd_nxt, tw.ts_recent)
                   for tw in stack.host.tw.records.values()}

            # younger than tcp_tw_reuse_delay: not yet
            assert loop.time() - t_first < delay_ms / 1000 - 0.2, "too slow to test the delay"
            before = [(tw.lport, tw.entered) for tw in stack.host.tw.records.values()]
            with pytest.raises(OSError) as exc:
                _, w = await stack.open_connection(KERNEL, SERVER_PORT)
                # (seen once in CI, not reproduced: say what the table held)
                pytest.fail(f"connected from port {w.get_extra_info('sockname')[1]} at "
                            f"{stack.host.now} ms; TIME-WAIT (port, entered) before: "
                            f"{before}; now {stack.connections()}; "
                            f"counters {dict(stack.counters.nonzero())}")
            assert exc.value.errno == errno.EADDRNOTAVAIL
            assert "TIME-WAIT" in str(exc.value)

            await asyncio.sleep(max(0.0, t_first + delay_ms / 1000 + 0.1 - loop.time()))
            kbefore = kernel_mib()
            # four more connections, all open at once: each takes over one record
            conns = []
            for i in range(4):
                reader, writer = await stack.open_connection(KERNEL, SERVER_PORT)
                ks, peer = await asyncio.wait_for(loop.sock_accept(ls), 5)
                ks.setblocking(False)
                conns.append((reader, writer, ks, peer))
            assert stack.counters["TWRecycled"] == 4
            assert len(stack.host.tw) == 0
            ports = {w.get_extra_info("sockname")[1] for _, w, _, _ in conns}
            assert ports == ALL_PORTS
            assert {p[1] for *_, p in conns} == ALL_PORTS     # the kernel accepted them all
            for lport in ALL_PORTS:
                conn = stack.host.conns[tw_key(SERVER_PORT, lport)]
                snd_nxt, ts_recent = old[lport]
                assert conn.iss == (snd_nxt + 65537) & M32    # tcp_twsk_unique's write_seq
                assert conn.ts_ok
            for i, (reader, writer, ks, _) in enumerate(conns):
                writer.write(b"new%d" % i)
                await writer.drain()
                assert await recv_exactly(ks, 4) == b"new%d" % i
                await loop.sock_sendall(ks, b"back%d" % i)
                assert await asyncio.wait_for(reader.readexactly(5), 5) == b"back%d" % i
            kafter = kernel_mib()
            assert delta(kbefore, kafter, "TcpPassiveOpens") == 4
            assert delta(kbefore, kafter, "TcpOutRsts") == 0
            assert stack.counters["TCPSynRetrans"] == 0
            assert stack.counters["TcpAttemptFails"] == 0
            for reader, writer, ks, _ in conns:
                writer.close()
                ks.close()
            ls.close()
    run(main(), timeout=30)


@pytest.mark.parametrize("tw_reuse", [0, 2])
def test_tw_reuse_off_or_loopback_only_fifth_connect_fails(netns, run, tw_reuse):
    async def main():
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", sysctl={
                "net.ipv4.tcp_tw_reuse": tw_reuse,
                "net.ipv4.tcp_tw_reuse_delay": 100,
                "net.ipv4.ip_local_port_range": "%d %d" % PORT_RANGE}) as stack:
            ls = kernel_listener()
            await fill_range_with_time_wait(stack, ls)
            await asyncio.sleep(0.3)                     # well past tcp_tw_reuse_delay
            before = kernel_mib()
            with pytest.raises(OSError) as exc:
                await stack.open_connection(KERNEL, SERVER_PORT)
            assert exc.value.errno == errno.EADDRNOTAVAIL
            assert "TIME-WAIT" in str(exc.value)
            assert f"tcp_tw_reuse={tw_reuse}" in str(exc.value)
            assert stack.counters["TWRecycled"] == 0
            assert stack.counters["TcpActiveOpens"] == 4   # no SYN went out
            assert len(tw_records(stack)) == 4           # the records are untouched
            assert delta(before, kernel_mib(), "TcpPassiveOpens") == 0
            ls.close()
    run(main(), timeout=30)


# ---------------------------------------------------------------------------------------------
# 3. ustack client bound explicitly to one port, reconnecting over its own TIME-WAIT

@pytest.mark.parametrize("ustack_ts", [1, 0], ids=["ts-on", "ts-off"])
def test_explicit_bind_reconnects_over_time_wait(netns, run, ustack_ts):
    lport = 5000

    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", sysctl={
                "net.ipv4.tcp_tw_reuse": 0,
                "net.ipv4.tcp_timestamps": ustack_ts}) as stack:
            ls = kernel_listener()
            kw = dict(local_addr=(None, lport), options={"reuseaddr": True})
            assert await ustack_client_session(stack, ls, b"old", **kw) == lport
            assert await run_until(lambda: tw_records(stack) == [
                (lport, (KERNEL, SERVER_PORT), "TIME-WAIT")]), stack.connections()
            await wait_kernel_closed({lport})
            record = stack.host.tw.get(tw_key(SERVER_PORT, lport))
            assert record.ts_ok == bool(ustack_ts)
            # without SO_REUSEADDR the port itself is taken (the record holds it)
            with pytest.raises(OSError) as exc:
                stack.host.bind(lport)
            assert exc.value.errno == errno.EADDRINUSE

            if not ustack_ts:
                with pytest.raises(OSError) as exc:
                    await stack.open_connection(KERNEL, SERVER_PORT, **kw)
                assert exc.value.errno == errno.EADDRNOTAVAIL
                assert "TIME-WAIT" in str(exc.value)
                assert stack.counters["TWRecycled"] == 0
                assert stack.counters["TcpActiveOpens"] == 1
                assert stack.host.tw.get(tw_key(SERVER_PORT, lport)) == record   # the same record (still)
                assert stack.host.ports.holders(lport) == 1   # the failed bind let go
                ls.close()
                return

            kbefore = kernel_mib()
            reader, writer = await stack.open_connection(KERNEL, SERVER_PORT, **kw)
            assert writer.get_extra_info("sockname") == (USTACK, lport)
            ks, peer = await asyncio.wait_for(loop.sock_accept(ls), 5)
            ks.setblocking(False)
            assert peer == (USTACK, lport)
            assert stack.counters["TWRecycled"] == 1
            assert stack.host.tw.get(tw_key(SERVER_PORT, lport)) is None
            assert stack.host.conns[tw_key(SERVER_PORT, lport)].iss == \
                (record.snd_nxt + 65537) & M32
            writer.write(b"again")
            await writer.drain()
            assert await recv_exactly(ks, 5) == b"again"
            await loop.sock_sendall(ks, b"reply")
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"reply"
            kafter = kernel_mib()
            assert delta(kbefore, kafter, "TcpPassiveOpens") == 1
            assert delta(kbefore, kafter, "TcpOutRsts") == 0
            assert stack.counters["TCPSynRetrans"] == 0
            writer.close()
            ks.close()
            ls.close()
    run(main(), timeout=30)
