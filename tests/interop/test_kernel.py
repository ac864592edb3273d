"""ustack against the Linux kernel over a real TUN device, in a private network namespace.

The kernel's side of the device is 198.18.0.1, ustack is 198.18.0.2.  Kernel-side code uses
real sockets on the same event loop (loop.sock_*), so nothing here needs a thread.  Every test
runs on uvloop and on the standard asyncio loop.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import struct

import pytest

from ustack import Stack
from ustack.aio import run_until
from ustack.demo import echo_handler
from ustack.wire import build_tcp, internet_checksum, ip_to_int

pytestmark = pytest.mark.root

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"


def tun_stack(**sysctl) -> Stack:
    return Stack.tun("ust0", USTACK, f"{KERNEL}/24", sysctl=sysctl or None)


async def kernel_echo_roundtrip(size: int, port: int = 7) -> tuple[bytes, bytes]:
    """Kernel client: send `size` random bytes, half-close, read everything back."""
    loop = asyncio.get_running_loop()
    data = os.urandom(size)
    s = socket.socket()
    s.setblocking(False)
    try:
        await loop.sock_connect(s, (USTACK, port))

        async def sender() -> None:
            await loop.sock_sendall(s, data)
            s.shutdown(socket.SHUT_WR)
        task = asyncio.create_task(sender())
        got = bytearray()
        while True:
            chunk = await loop.sock_recv(s, 1 << 18)
            if not chunk:
                break
            got += chunk
        await task
    finally:
        s.close()
    return data, bytes(got)


def test_kernel_client_echo_10mb_both_ways(netns, run):
    async def main():
        async with tun_stack() as stack:
            await stack.start_server(echo_handler, port=7)
            sent, got = await kernel_echo_roundtrip(10 * 1024 * 1024)
            assert len(got) == len(sent)
            assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
            # the kernel closed first, so ustack went CLOSE-WAIT -> LAST-ACK -> CLOSED
            assert await run_until(lambda: all(c.state == "LISTEN"
                                               for c in stack.connections()))
            assert stack.counters["TcpPassiveOpens"] == 1
            assert stack.counters["TcpInCsumErrors"] == 0
    run(main())


def test_ustack_client_kernel_server_both_ways(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        up = os.urandom(3 * 1024 * 1024)
        down = os.urandom(3 * 1024 * 1024)
        async with tun_stack() as stack:
            ls = socket.socket()  # after the stack: the kernel's address is on its device
            ls.bind((KERNEL, 9000))
            ls.listen()
            ls.setblocking(False)
            reader, writer = await stack.open_connection(KERNEL, 9000)
            ks, peer = await loop.sock_accept(ls)
            ks.setblocking(False)
            assert peer[0] == USTACK
            assert writer.get_extra_info("peername") == (KERNEL, 9000)
            assert writer.get_extra_info("sockname") == (USTACK, peer[1])

            async def kernel_side() -> bytes:
                task = asyncio.create_task(loop.sock_sendall(ks, down))
                got = bytearray()
                while len(got) < len(up):
                    chunk = await loop.sock_recv(ks, 1 << 18)
                    assert chunk, "ustack closed early"
                    got += chunk
                await task
                return bytes(got)
            ktask = asyncio.create_task(kernel_side())
            writer.write(up)
            await writer.drain()
            received = await reader.readexactly(len(down))
            assert received == down
            assert await ktask == up
            writer.close()
            await writer.wait_closed()
            assert await loop.sock_recv(ks, 10) == b""  # the kernel sees our FIN
            ks.close()
            # ustack closed first: it ends in TIME-WAIT, the kernel in CLOSED
            assert await run_until(lambda: [c.state for c in stack.connections()]
                                   == ["TIME-WAIT"])
        ls.close()
    run(main())


def test_ping(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        async with tun_stack() as stack:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.setblocking(False)
            try:
                for seq in range(3):
                    payload = os.urandom(56)
                    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x1234, seq)
                    csum = internet_checksum(hdr + payload)
                    s.sendto(struct.pack("!BBHHH", 8, 0, csum, 0x1234, seq) + payload,
                             (USTACK, 0))
                    reply = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
                    ihl = (reply[0] & 0x0F) * 4
                    icmp = reply[ihl:]
                    assert icmp[0] == 0 and icmp[1] == 0  # echo reply
                    assert struct.unpack("!HH", icmp[4:8]) == (0x1234, seq)
                    assert icmp[8:] == payload
                    assert internet_checksum(icmp) == 0
            finally:
                s.close()
            assert stack.counters["IcmpInEchos"] == 3
            assert stack.counters["IcmpOutEchoReps"] == 3
    run(main())


def test_closed_ports_refuse_both_ways(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        async with tun_stack() as stack:
            s = socket.socket()
            s.setblocking(False)
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(s, (USTACK, 4321))
            s.close()
            assert stack.counters["TcpOutRsts"] == 1
            with pytest.raises(ConnectionRefusedError):
                await stack.open_connection(KERNEL, 4322)
            assert stack.counters["TcpAttemptFails"] == 1
            assert stack.connections() == []
    run(main())


def test_100_concurrent_connections(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        async with tun_stack() as stack:
            await stack.start_server(echo_handler, port=7)

            async def one(i: int) -> bool:
                s = socket.socket()
                s.setblocking(False)
                try:
                    await loop.sock_connect(s, (USTACK, 7))
                    msg = f"connection {i} ".encode() * 200
                    await loop.sock_sendall(s, msg)
                    got = bytearray()
                    while len(got) < len(msg):
                        chunk = await loop.sock_recv(s, 65536)
                        if not chunk:
                            break
                        got += chunk
                    return bytes(got) == msg
                finally:
                    s.close()
            # hold all 100 open at once: connect all, then exchange
            results = await asyncio.gather(*(one(i) for i in range(100)))
            assert all(results)
            assert stack.counters["TcpPassiveOpens"] == 100
    run(main())


def test_100_concurrent_ustack_clients(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        async with tun_stack() as stack:
            ls = socket.socket()
            ls.bind((KERNEL, 9001))
            ls.listen(128)
            ls.setblocking(False)
            conns = await asyncio.gather(*(stack.open_connection(KERNEL, 9001)
                                           for _ in range(100)))
            accepted = [await loop.sock_accept(ls) for _ in range(100)]
            ports = {w.get_extra_info("sockname")[1] for _, w in conns}
            assert len(ports) == 100
            assert {a[1][1] for a in accepted} == ports
            lo, hi = stack.sysctl["net.ipv4.ip_local_port_range"]
            assert all(lo <= p <= hi for p in ports)
            assert sum(c.state == "ESTAB" for c in stack.connections()) == 100
            for ks, _ in accepted:
                ks.close()
            for _, w in conns:
                w.close()
        ls.close()
    run(main())


def _packet_socket() -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.bind(("ust0", 0x0800))
    return s


def malformed_packets() -> dict[str, tuple[bytes, str]]:
    """Bad datagrams addressed to ustack, with the counter each must move."""
    src, dst = ip_to_int(KERNEL), ip_to_int(USTACK)
    good = build_tcp(src, dst, 40000, 7, 1000, 0, 0x02, 65535, mss=1460)
    bad_ip_csum = bytearray(good)
    bad_ip_csum[10] ^= 0xFF
    bad_tcp_csum = bytearray(good)
    bad_tcp_csum[36] ^= 0xFF  # TCP checksum field
    bad_doff = bytearray(good)
    bad_doff[32] = (bad_doff[32] & 0x0F) | (15 << 4)  # data offset beyond the segment
    csum_fix = bytearray(bad_doff)
    # recompute the TCP checksum so only the length is wrong
    csum_fix[36:38] = b"\0\0"
    pseudo = bytes(csum_fix[12:20]) + struct.pack("!BBH", 0, 6, len(csum_fix) - 20)
    c = internet_checksum(pseudo + bytes(csum_fix[20:]))
    csum_fix[36:38] = struct.pack("!H", c)
    return {
        "truncated ip header": (good[:12], "IpInHdrErrors"),
        "bad ip checksum": (bytes(bad_ip_csum), "IpInHdrErrors"),
        "bad tcp checksum": (bytes(bad_tcp_csum), "TcpInCsumErrors"),
        "tcp data offset past the end": (bytes(csum_fix), "TcpInErrs"),
        "ip version 5": (bytes([0x55]) + good[1:], "IpInHdrErrors"),
    }


def test_malformed_packets_counted_and_dropped_during_transfer(netns, run):
    async def main():
        async with tun_stack() as stack:
            await stack.start_server(echo_handler, port=7)
            cases = malformed_packets()
            before = {name: stack.counters[counter] for _, (_, counter) in cases.items()
                      for name in [counter]}
            inject = _packet_socket()
            injected = {name: 0 for name in cases}

            async def injector() -> None:
                for round_ in range(20):
                    for name, (pkt, _) in cases.items():
                        inject.send(pkt)
                        injected[name] += 1
                    await asyncio.sleep(0.005)
            itask = asyncio.create_task(injector())
            sent, got = await kernel_echo_roundtrip(4 * 1024 * 1024)
            await itask
            inject.close()
            assert got == sent, "the transfer must complete intact"
            await asyncio.sleep(0.05)
            expected: dict[str, int] = {}
            for name, (_, counter) in cases.items():
                expected[counter] = expected.get(counter, 0) + injected[name]
            for counter, n in expected.items():
                assert stack.counters[counter] - before[counter] == n, counter
    run(main())


def test_tun_without_namespace_refused(run):
    """ustack refuses to add a TUN device in the root namespace unless told to."""
    from tests.conftest import require_root
    require_root()
    from ustack.netns import in_root_namespace
    if not in_root_namespace():
        pytest.skip("the test process is not in the root namespace")

    async def main():
        with pytest.raises(RuntimeError, match="root"):
            async with tun_stack():
                pass
    run(main())


def test_kernel_sees_reset_on_abort(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        accepted: list[asyncio.StreamWriter] = []

        async def handler(reader, writer):
            accepted.append(writer)
        async with tun_stack() as stack:
            await stack.start_server(handler, port=8)
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (USTACK, 8))
            assert await run_until(lambda: bool(accepted))
            accepted[0].transport.abort()
            with pytest.raises(ConnectionResetError):
                while True:
                    if not await loop.sock_recv(s, 100):
                        break
            s.close()
            assert stack.counters["TcpOutRsts"] >= 1
    run(main())


def test_kernel_closed_port_errno(netns, run):
    """The kernel reports ECONNREFUSED exactly (not a timeout) for a ustack closed port."""
    async def main():
        loop = asyncio.get_running_loop()
        async with tun_stack():
            s = socket.socket()
            s.setblocking(False)
            try:
                await loop.sock_connect(s, (USTACK, 1))
            except OSError as exc:
                assert exc.errno == errno.ECONNREFUSED
            else:
                pytest.fail("connect to a closed ustack port succeeded")
            finally:
                s.close()
    run(main())


@pytest.mark.parametrize("timestamps", [1, 0])
def test_kernel_client_over_syn_cookies(netns, run, timestamps):
    """tcp_syncookies=2: every handshake goes through a SYN cookie.  A kernel client's
    connection must work exactly like a normal one: data both ways, byte-exact, window scaling
    and SACK carried in the cookie's TSval (or left out without timestamps).

    The answer is longer than the request on purpose: a cookie is checked against the ACK's
    seq - 1 and ack - 1, so an ACK whose both numbers moved on by the same amount (an echo
    connection's last ACK, if it arrives after the connection is gone, say for a FIN sent
    again) would pass as the cookie again, here as in Linux."""
    async def answer(reader, writer):
        data = await reader.read(-1)
        writer.write(data[::-1] + b"+cookie")
        await writer.drain()
        writer.close()

    async def roundtrip(size: int) -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        data = os.urandom(size)
        s = socket.socket()
        s.setblocking(False)
        try:
            await loop.sock_connect(s, (USTACK, 7))
            await loop.sock_sendall(s, data)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := await loop.sock_recv(s, 1 << 18):
                got += chunk
        finally:
            s.close()
        return data, bytes(got)

    async def main():
        async with tun_stack(**{"net.ipv4.tcp_syncookies": 2,
                                "net.ipv4.tcp_timestamps": timestamps}) as stack:
            await stack.start_server(answer, port=7)
            for _ in range(3):
                sent, got = await roundtrip(2 * 1024 * 1024)
                assert got == sent[::-1] + b"+cookie"
            assert stack.counters["TcpExtSyncookiesSent"] == 3
            assert stack.counters["TcpExtSyncookiesRecv"] == 3
            assert stack.counters["TcpPassiveOpens"] == 3
    run(main())
