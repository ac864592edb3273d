"""Links: FdLink over sockets, TunLink against the real kernel in a private namespace, MemoryWire.

The TUN tests put the Linux kernel on the other side of the device: a kernel socket's SYN comes
out of the link, and a struct-built RST+ACK or ICMP echo request written into it makes the
kernel react.  Packets are built and decoded here with struct on purpose: these tests check the
link, not ustack's own parser.
"""
from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import uvloop

from ustack.link import FdLink, Link, MemoryLink, MemoryWire, TunLink
from ustack.netns import Netns, in_root_namespace

REPO = Path(__file__).resolve().parents[1]
KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"

LOOPS = {"asyncio": asyncio.SelectorEventLoop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """run(coro_fn, *args): run a coroutine function to completion on a fresh loop of each kind."""

    def runner(coro_fn, *args):
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(asyncio.wait_for(coro_fn(*args), 20))

    return runner


@pytest.fixture
def netns():  # root-marked tests are gated by tests/conftest.py
    with Netns() as ns:
        yield ns


@pytest.fixture
def tun(netns):
    link = TunLink.open("ust0")
    yield link
    link.close()


# -- packets, built and read with struct ----------------------------------------------------
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, proto,
                         0, socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
        window: int = 0) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header))
    header = header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]
    return ipv4(src, dst, 6, header)


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes, *,
              bad_checksum: bool = False) -> bytes:
    message = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    csum = checksum(message) ^ (0x5A5A if bad_checksum else 0)
    return ipv4(src, dst, 1, message[:2] + struct.pack("!H", csum) + message[4:])


def parse_ipv4(packet: bytes) -> dict:
    version_ihl, _, total_length, _, _, _, proto, _, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", packet[:20])
    ihl = (version_ihl & 0xF) * 4
    assert version_ihl >> 4 == 4, packet.hex()
    assert total_length == len(packet), "a link must move whole packets"
    assert checksum(packet[:ihl]) == 0, "bad IPv4 header checksum"
    return {"proto": proto, "src": socket.inet_ntoa(src), "dst": socket.inet_ntoa(dst),
            "payload": packet[ihl:], "pseudo": src + dst}


def parse_tcp(packet: bytes) -> dict:
    ip = parse_ipv4(packet)
    assert ip["proto"] == 6, f"expected TCP, got protocol {ip['proto']}"
    seg = ip["payload"]
    pseudo = ip["pseudo"] + struct.pack("!BBH", 0, 6, len(seg))
    assert checksum(pseudo + seg) == 0, "bad TCP checksum"
    sport, dport, seq, ack, offset, flags, window = struct.unpack("!HHIIBBH", seg[:16])
    options = seg[20:(offset >> 4) * 4]
    mss = None
    i = 0
    while i < len(options) and options[i] != 0:  # EOL ends the list
        if options[i] == 1:  # NOP
            i += 1
            continue
        kind, length = options[i], options[i + 1]
        if kind == 2:
            mss = struct.unpack("!H", options[i + 2:i + 4])[0]
        i += length
    return {**ip, "sport": sport, "dport": dport, "seq": seq, "ack": ack, "flags": flags,
            "window": window, "mss": mss}


def parse_icmp(packet: bytes) -> dict:
    ip = parse_ipv4(packet)
    assert ip["proto"] == 1, f"expected ICMP, got protocol {ip['proto']}"
    msg = ip["payload"]
    assert checksum(msg) == 0, "bad ICMP checksum"
    kind, code, _, ident, seq = struct.unpack("!BBHHH", msg[:8])
    return {**ip, "type": kind, "code": code, "ident": ident, "seq": seq, "data": msg[8:]}


def test_packet_helpers_match_known_checksums():
    # The kernel's SYN seen in a trial run, byte for byte: both checksums in it must verify.
    syn = bytes.fromhex(
        "4500003c795f400040063535c6120001c6120002a0cc109208ea644600000000a002faf059c30000"
        "020405b40402080a2446244c000000000103030a")
    parsed = parse_tcp(syn)
    assert (parsed["src"], parsed["dst"], parsed["dport"], parsed["flags"], parsed["mss"]) == (
        KERNEL, USTACK, 4242, SYN, 1460)
    rst = parse_tcp(tcp(USTACK, KERNEL, 4242, 41164, 0, 0x08EA6447, RST | ACK))
    assert rst["flags"] == RST | ACK and rst["ack"] == 0x08EA6447


# -- TUN against the kernel -----------------------------------------------------------------
class Inbox:
    """Collects what a link delivers, and lets a coroutine wait for it."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.calls: list[int] = []
        self._event = asyncio.Event()

    def __call__(self, packets: list[bytes]) -> None:
        self.calls.append(len(packets))
        self.packets.extend(packets)
        self._event.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        async def until() -> None:
            while len(self.packets) < count:
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(until(), timeout)
        return self.packets


@pytest.mark.root
def test_tun_link_reads_kernel_syn_and_rst_refuses_the_connect(tun, run):
    port = 4242

    async def scenario():
        loop = asyncio.get_running_loop()
        inbox = Inbox()
        tun.start(loop, inbox)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            connecting = asyncio.ensure_future(loop.sock_connect(sock, (USTACK, port)))
            (packet,) = await inbox.wait_for(1)
            syn = parse_tcp(packet)
            assert (syn["src"], syn["dst"], syn["dport"]) == (KERNEL, USTACK, port)
            assert syn["flags"] == SYN
            assert syn["mss"] == 1500 - 40  # the MTU we gave the device
            assert sock.getsockname() == (KERNEL, syn["sport"])
            tun.send(tcp(USTACK, KERNEL, port, syn["sport"], 0, (syn["seq"] + 1) % 2**32, RST | ACK))
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(connecting, 5)
        finally:
            sock.close()
        assert tun.stats["rx_packets"] >= 1 and tun.stats["tx_packets"] == 1

    run(scenario)


@pytest.mark.root
def test_tun_link_kernel_answers_crafted_echo_request(tun, run):
    async def scenario():
        inbox = Inbox()
        tun.start(asyncio.get_running_loop(), inbox)
        payload = bytes(range(56))
        # A wrong checksum must be ignored by the kernel, the right one answered.
        tun.send(icmp_echo(USTACK, KERNEL, 0x1234, 1, payload, bad_checksum=True))
        tun.send(icmp_echo(USTACK, KERNEL, 0x1234, 2, payload))
        (packet,) = await inbox.wait_for(1)
        reply = parse_icmp(packet)
        assert (reply["src"], reply["dst"], reply["type"], reply["code"]) == (KERNEL, USTACK, 0, 0)
        assert (reply["ident"], reply["seq"], reply["data"]) == (0x1234, 2, payload)
        await asyncio.sleep(0.2)
        assert len(inbox.packets) == 1, "the kernel answered an echo request with a bad checksum"

    run(scenario)


@pytest.mark.root
def test_tun_is_quiet_until_we_talk(tun, run):
    """IPv6 is off on the device: no router solicitations or MLD reports show up."""

    async def scenario():
        inbox = Inbox()
        tun.start(asyncio.get_running_loop(), inbox)
        await asyncio.sleep(0.5)
        assert inbox.packets == []

    run(scenario)


@pytest.mark.root
def test_tun_link_counts_packets_the_kernel_refuses(tun, run):
    async def scenario():
        inbox = Inbox()
        tun.start(asyncio.get_running_loop(), inbox)
        tun.send(b"\x00" * 40)  # not IP: the TUN driver says EINVAL
        assert tun.stats["tx_errors"] == 1 and tun.stats["tx_packets"] == 0
        tun.send(icmp_echo(USTACK, KERNEL, 7, 7, b"still works"))
        (packet,) = await inbox.wait_for(1)
        assert parse_icmp(packet)["data"] == b"still works"

    run(scenario)


@pytest.mark.root
def test_namespace_and_tun_can_be_made_inside_a_running_loop(run):
    """pyroute2's sync API cannot run on a thread whose loop runs: netns hands it to a thread."""

    async def scenario():
        with Netns() as ns:
            assert os.stat("/proc/thread-self/ns/net").st_ino == ns.inode
            link = TunLink.open("ust1", kernel_address="198.18.1.1/24")
            try:
                inbox = Inbox()
                link.start(asyncio.get_running_loop(), inbox)
                link.send(icmp_echo("198.18.1.2", "198.18.1.1", 1, 1, b"hi"))
                (packet,) = await inbox.wait_for(1)
                assert parse_icmp(packet)["type"] == 0
            finally:
                link.close()
        assert os.stat("/proc/thread-self/ns/net").st_ino != ns.inode

    run(scenario)


@pytest.mark.root
def test_tun_link_configures_the_device_and_close_removes_it(netns):
    from pyroute2 import IPRoute

    link = TunLink.open("ust%d", kernel_address="198.18.5.1/24", mtu=1280)
    name = link.ifname
    assert name.startswith("ust") and name != "ust%d"
    assert link.kernel_address == "198.18.5.1/24" and link.mtu == 1280
    assert isinstance(link, Link)
    assert netns.read_sysctl(f"net.ipv6.conf.{name}.disable_ipv6") == "1"
    assert os.get_blocking(link.fileno()) is False
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=name)
        (dev,) = ipr.get_links(index)
        assert dev.get("mtu") == 1280
        assert dev["flags"] & 1, "link is not up"
        addrs = [(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index)]
        assert addrs == [("198.18.5.1", 24)]
        routes = [(r.get("dst"), r["dst_len"]) for r in ipr.get_routes(family=socket.AF_INET, oif=index)
                  if r["table"] == 254]
        assert ("198.18.5.0", 24) in routes
    link.close()
    link.close()  # idempotent
    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=name) == []


@pytest.mark.root
def test_tun_link_refuses_root_namespace():
    if not in_root_namespace():
        pytest.skip("this process does not run in the root network namespace")
    with pytest.raises(RuntimeError, match="root network namespace"):
        TunLink.open("ust0")


_DROP_CAP_AND_OPEN = textwrap.dedent("""
    import ctypes, sys
    if sys.argv[1] == "capset":
        libc = ctypes.CDLL(None, use_errno=True)
        PR_CAPBSET_DROP, CAP_NET_ADMIN = 24, 12
        assert libc.prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) == 0
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        assert libc.capget(ctypes.byref(header), data) == 0
        for field in ("effective", "permitted", "inheritable"):
            setattr(data[0], field, getattr(data[0], field) & ~(1 << CAP_NET_ADMIN))
        assert libc.capset(ctypes.byref(header), data) == 0
    status = open("/proc/thread-self/status").read()
    cap_eff = int(status.split("CapEff:")[1].split()[0], 16)
    assert not cap_eff & (1 << 12), "CAP_NET_ADMIN is still effective"
    from ustack.netns import in_root_namespace, setup_tun
    assert not in_root_namespace()
    try:
        setup_tun("ust7")
    except PermissionError as exc:
        print(exc)
        sys.exit(0)
    print("no PermissionError")
    sys.exit(1)
""")


@pytest.mark.root
@pytest.mark.parametrize("how", ["capset", "setpriv"])
def test_tun_without_cap_net_admin_says_so(netns, how):
    # The child starts in this thread's private namespace, so a failure cannot touch the host.
    command = [sys.executable, "-c", _DROP_CAP_AND_OPEN, how]
    if how == "setpriv":
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is not installed; the capset case covers this")
        command = [setpriv, "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--",
                   *command]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "creating TUN device ust7 needs CAP_NET_ADMIN (run as root" in result.stdout


# -- FdLink over a SEQPACKET socketpair -----------------------------------------------------
def seqpacket_pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def numbered(i: int) -> bytes:
    """A packet that says its own number, 40..1439 bytes long."""
    return struct.pack("!I", i) + bytes([i & 0xFF]) * (36 + (i * 7919) % 1400)


def test_fd_link_reads_at_most_batch_per_callback(run):
    a, b = seqpacket_pair()

    def small(i: int) -> bytes:
        return struct.pack("!I", i) * 16

    async def scenario():
        for i in range(150):
            a.send(small(i))  # all fit in the socket buffer before the link starts
        link = FdLink(b.detach(), batch=64)
        inbox = Inbox()
        link.start(asyncio.get_running_loop(), inbox)
        await inbox.wait_for(150)
        assert inbox.calls == [64, 64, 22]
        assert inbox.packets == [small(i) for i in range(150)]
        assert link.stats["rx_packets"] == 150
        link.close()

    try:
        run(scenario)
    finally:
        a.close()


def test_fd_link_queues_on_eagain_and_keeps_order(run):
    total = 5000
    a, b = seqpacket_pair(sndbuf=4096)

    async def scenario():
        loop = asyncio.get_running_loop()
        sender = FdLink(a.detach())
        receiver = FdLink(b.detach())
        inbox = Inbox()
        sender.start(loop, lambda packets: pytest.fail("nothing is sent this way"))
        receiver.start(loop, inbox)
        # Everything is sent before the loop runs once: the socket fills and the rest must wait.
        i = 0
        while i < total:
            if i % 3:
                sender.send_many([numbered(j) for j in range(i, min(i + 50, total))])
                i = min(i + 50, total)
            else:
                sender.send(bytearray(numbered(i)))  # mutable: the queue must copy it
                i += 1
        assert sender.stats["tx_queued"] > total // 2, sender.stats
        assert sender.stats["tx_queue_peak"] > 0 and sender.tx_queue_len > 0
        await inbox.wait_for(total, timeout=30)
        assert len(inbox.packets) == total
        for n, packet in enumerate(inbox.packets):
            assert packet == numbered(n), f"packet {n} is out of order or damaged"
        assert sender.tx_queue_len == 0
        assert sender.stats["tx_packets"] == total and sender.stats["tx_errors"] == 0
        assert max(inbox.calls) <= receiver.batch
        # The queue drained, so a new packet goes straight out again.
        queued = sender.stats["tx_queued"]
        sender.send(numbered(total))
        assert sender.stats["tx_queued"] == queued
        await inbox.wait_for(total + 1)
        sender.close()
        receiver.close()

    run(scenario)


def test_fd_link_retries_after_enobufs_and_drops_only_refused_packets(run, monkeypatch):
    from ustack.link import fd as fd_module

    real_write = os.write
    faults = {"ENOBUFS": 3}

    def flaky_write(fd: int, data: bytes) -> int:
        if data.startswith(b"bad"):
            raise OSError(errno.EINVAL, "Invalid argument")
        if data == numbered(5) and faults["ENOBUFS"]:
            faults["ENOBUFS"] -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return real_write(fd, data)

    a, b = seqpacket_pair()

    async def scenario():
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(fd_module.os, "write", flaky_write)
        sender, receiver = FdLink(a.detach()), FdLink(b.detach())
        inbox = Inbox()
        sender.start(loop, inbox)
        receiver.start(loop, inbox)
        sender.send_many([numbered(i) for i in range(5)] + [b"bad one"])
        sender.send_many([numbered(i) for i in range(5, 10)])  # numbered(5) hits ENOBUFS
        sender.send(b"bad two")
        sender.send(numbered(10))
        assert sender.tx_queue_len == 7
        await inbox.wait_for(11)
        assert inbox.packets == [numbered(i) for i in range(11)]
        assert faults["ENOBUFS"] == 0
        assert sender.stats["tx_errors"] == 2 and sender.stats["tx_packets"] == 11
        sender.close()
        receiver.close()

    run(scenario)


def test_fd_link_close_is_idempotent_and_owns_the_fd_only_if_asked(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        a, b = seqpacket_pair()
        owned = FdLink(a.detach())
        inbox = Inbox()
        owned.start(loop, inbox)
        owned.close()
        owned.close()
        assert owned.closed
        with pytest.raises(OSError):
            os.fstat(owned.fileno())
        owned.send(b"E" * 20)
        assert owned.stats["tx_dropped"] == 1

        fd = b.detach()
        borrowed = FdLink(fd, close_fd=False)
        borrowed.start(loop, inbox)
        borrowed.close()
        os.fstat(fd)  # still open
        os.close(fd)
        await asyncio.sleep(0.05)
        assert inbox.packets == []
        with pytest.raises(RuntimeError):
            borrowed.start(loop, inbox)

    run(scenario)


def test_fd_link_stops_reading_at_end_of_file(run):
    async def scenario():
        a, b = seqpacket_pair()
        link = FdLink(b.detach())
        inbox = Inbox()
        link.start(asyncio.get_running_loop(), inbox)
        a.send(b"last words")
        a.close()
        await inbox.wait_for(1)
        await asyncio.sleep(0.05)
        assert inbox.packets == [b"last words"] and not link.reading
        link.close()

    run(scenario)


# -- MemoryWire -----------------------------------------------------------------------------
def test_memory_wire_delivers_a_burst_in_one_call(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        wire = MemoryWire(mtu=9000)
        at_a, at_b = Inbox(), Inbox()
        wire.a.start(loop, at_a)
        wire.b.start(loop, at_b)
        assert isinstance(wire.a, MemoryLink) and isinstance(wire.a, Link)
        assert wire.a.mtu == wire.b.mtu == 9000
        for i in range(10):
            wire.a.send(numbered(i))
        wire.a.send_many([numbered(i) for i in range(10, 20)])
        assert at_b.packets == [], "delivery is on the next loop iteration, not inside send()"
        await asyncio.sleep(0)
        assert at_b.calls == [20]
        assert at_b.packets == [numbered(i) for i in range(20)]
        wire.b.send(b"reply")
        await at_a.wait_for(1)
        assert at_a.packets == [b"reply"] and at_a.calls == [1]
        assert wire.a.stats["tx_packets"] == 20 and wire.b.stats["rx_packets"] == 20

    run(scenario)


def test_memory_wire_tap_and_drop_if(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        wire = MemoryWire()
        seen: list[tuple[str, bytes]] = []
        wire.tap(lambda direction, packet: seen.append((direction, packet)))
        drop_odd = wire.drop_if(lambda direction, packet: direction == "a->b" and packet[3] % 2 == 1)
        at_a, at_b = Inbox(), Inbox()
        wire.a.start(loop, at_a)
        wire.b.start(loop, at_b)
        wire.a.send_many([numbered(i) for i in range(6)])
        wire.b.send(numbered(1))  # odd, but the other direction
        await asyncio.sleep(0)
        assert at_b.packets == [numbered(0), numbered(2), numbered(4)]
        assert at_a.packets == [numbered(1)]
        assert seen == [("a->b", numbered(i)) for i in range(6)] + [("b->a", numbered(1))]
        assert wire.a.stats["tx_dropped"] == 3
        wire.remove_hook(drop_odd)
        wire.a.send(numbered(7))
        await asyncio.sleep(0)
        assert at_b.packets[-1] == numbered(7)

    run(scenario)


def test_memory_wire_buffers_until_start_and_drops_after_close(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        wire = MemoryWire()
        wire.a.send(b"early")
        at_b = Inbox()
        wire.b.start(loop, at_b)
        await at_b.wait_for(1)
        assert at_b.packets == [b"early"]
        wire.a.send(b"in flight")
        wire.b.close()
        wire.b.close()
        wire.a.send(b"too late")
        await asyncio.sleep(0.01)
        assert at_b.packets == [b"early"]
        assert wire.a.stats["tx_dropped"] == 1

    run(scenario)
