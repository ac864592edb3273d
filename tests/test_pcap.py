"""ustack.pcap: files tcpdump reads as we meant them, read back by read_pcap, and a writer that
never takes the stack down when the disk fills or the reader of a pipe goes away."""
from __future__ import annotations

import asyncio
import errno
import io
import os
import shutil
import struct
import subprocess
import time

import pytest

from ustack import Stack
from ustack.pcap import LINKTYPE_RAW, PcapTap, PcapWriter, read_pcap, tap_factory
from ustack.wire import ACK, FIN, PSH, SYN, build_tcp, ip_to_int

A = ip_to_int("198.18.0.1")
B = ip_to_int("198.18.0.2")
T0 = 1_700_000_000.25


def handshake_packets() -> list[tuple[float, bytes]]:
    """A handshake, one data segment and a FIN, with sequence numbers we chose."""
    return [
        (T0, build_tcp(A, B, 40000, 80, 1000, 0, SYN, 64240, mss=1460)),
        (T0 + 0.000125, build_tcp(B, A, 80, 40000, 5000, 1001, SYN | ACK, 65160, mss=1460)),
        (T0 + 0.0002, build_tcp(A, B, 40000, 80, 1001, 5001, ACK, 502)),
        (T0 + 0.5, build_tcp(A, B, 40000, 80, 1001, 5001, PSH | ACK, 502, b"hello")),
        (T0 + 1.75, build_tcp(A, B, 40000, 80, 1006, 5001, FIN | ACK, 502)),
    ]


def tcpdump(path: str, *args: str) -> list[str]:
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed (.ci/setup installs it)")
    r = subprocess.run(["tcpdump", "-n", "-r", path, *args], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_tcpdump_reads_what_we_wrote(tmp_path) -> None:
    path = str(tmp_path / "built.pcap")
    with PcapWriter(path) as writer:
        for ts, packet in handshake_packets():
            assert writer.write(packet, ts)
    assert writer.packets == 5 and writer.dropped == 0 and writer.error is None
    lines = tcpdump(path, "-tt", "-S")   # epoch timestamps, absolute sequence numbers
    assert len(lines) == 5, lines
    assert lines[0] == ("1700000000.250000 IP 198.18.0.1.40000 > 198.18.0.2.80: Flags [S], "
                        "seq 1000, win 64240, options [mss 1460], length 0")
    assert lines[1].startswith("1700000000.250125 IP 198.18.0.2.80 > 198.18.0.1.40000: "
                               "Flags [S.], seq 5000, ack 1001, win 65160")
    assert lines[2].startswith("1700000000.250200 IP 198.18.0.1.40000 > 198.18.0.2.80: "
                               "Flags [.], ack 5001, win 502")
    assert "Flags [P.], seq 1001:1006, ack 5001, win 502, length 5" in lines[3]
    assert lines[3].startswith("1700000000.750000 ")
    assert "Flags [F.], seq 1006, ack 5001" in lines[4]
    assert lines[4].startswith("1700000002.000000 ")


def test_read_pcap_round_trip(tmp_path) -> None:
    path = tmp_path / "rt.pcap"
    packets = handshake_packets()
    with PcapWriter(path) as writer:
        for ts, packet in packets:
            writer.write(packet, ts)
    back = read_pcap(path)
    assert [p for _, p in back] == [p for _, p in packets]
    for (ts, _), (ts2, _) in zip(packets, back):
        assert abs(ts - ts2) < 1e-6
    # the file header: native byte order, version 2.4, snaplen, LINKTYPE_RAW
    raw = path.read_bytes()
    assert struct.unpack("=IHHiIII", raw[:24]) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_read_pcap_both_byte_orders_and_resolutions(tmp_path, order: str,
                                                    nanosecond: bool) -> None:
    packet = handshake_packets()[3][1]
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    frac = 123456789 if nanosecond else 123456
    data = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
    data += struct.pack(order + "IIII", 1_700_000_000, frac, len(packet), len(packet)) + packet
    data += struct.pack(order + "IIII", 1_700_000_001, 0, len(packet), len(packet)) + packet[:9]
    path = tmp_path / "foreign.pcap"
    path.write_bytes(data)
    # the second record is cut short (a capture still being written): left out
    [(ts, got)] = read_pcap(path)
    assert got == packet
    assert ts == pytest.approx(1_700_000_000 + (0.123456789 if nanosecond else 0.123456),
                               abs=1e-7)
    # and tcpdump agrees that this is one well-formed packet then a truncated record
    r = subprocess.run(["tcpdump", "-n", "-r", str(path)], capture_output=True, text=True)
    assert "Flags [P.]" in r.stdout and "length 5" in r.stdout


def test_read_pcap_rejects_other_files(tmp_path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(ValueError, match="pcapng"):
        read_pcap(bad)
    bad.write_bytes(b"GIF89a" + bytes(40))
    with pytest.raises(ValueError, match="not a pcap file"):
        read_pcap(bad)


def test_snaplen_cuts_records_but_keeps_the_wire_length(tmp_path) -> None:
    path = str(tmp_path / "snap.pcap")
    packet = handshake_packets()[3][1]
    with PcapWriter(path, snaplen=40) as writer:
        writer.write(packet, T0)
    [(_, got)] = read_pcap(path)
    assert got == packet[:40]
    raw = open(path, "rb").read()
    assert struct.unpack("=IIII", raw[24:40])[2:] == (40, len(packet))


# ------------------------------------------------------------------ errors
def test_open_failure_is_a_clear_oserror(tmp_path) -> None:
    missing = tmp_path / "no-such-dir" / "x.pcap"
    with pytest.raises(OSError) as info:
        PcapWriter(missing)
    assert info.value.errno == errno.ENOENT
    assert f"cannot open pcap file {missing}" in str(info.value)
    if os.path.exists("/dev/full"):
        with pytest.raises(OSError, match="cannot write to pcap file /dev/full"):
            PcapWriter("/dev/full")


class FillingDisk(io.RawIOBase):
    """A file that takes `room` bytes, then fails with ENOSPC, like a full disk."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(self.data) + len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += b
        return len(b)


def test_full_disk_stops_the_capture_without_raising() -> None:
    disk = FillingDisk(room=24 + 2 * (16 + 52))   # the header and two small records
    writer = PcapWriter(disk, flush_interval=None)
    results = [writer.write(p, ts) for ts, p in handshake_packets()]
    assert results[:2] == [True, True]
    assert results[2:] == [False, False, False]
    assert writer.error is not None and writer.error.errno == errno.ENOSPC
    assert writer.packets == 2 and writer.dropped == 3
    writer.flush()
    writer.close()   # neither raises
    assert not writer.write(b"x", T0) and writer.dropped == 4


def test_closed_pipe_stops_the_capture_without_raising() -> None:
    r, w = os.pipe()
    writer = PcapWriter(os.fdopen(w, "wb"), flush_interval=0)   # flush every packet
    os.close(r)   # the reader (say tcpdump -r -) went away
    ts, packet = handshake_packets()[0]
    assert writer.write(packet, ts) is False
    assert isinstance(writer.error, BrokenPipeError)
    assert writer.write(packet, ts) is False
    assert writer.dropped == 2 and writer.packets == 0
    writer.close()


# ------------------------------------------------------------------ PcapTap on a live stack
async def _exchange(client: Stack, server: Stack) -> None:
    async def echo(reader, writer):
        while data := await reader.read(1000):
            writer.write(data)
        writer.close()

    await server.start_server(echo, port=7)
    reader, writer = await client.open_connection("198.18.0.2", 7)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.write_eof()
    assert await reader.read() == b""
    writer.close()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not client.host.conns and not server.host.conns:
            break


def test_pcap_tap_records_both_directions(tmp_path) -> None:
    from ustack.link.memory import MemoryWire
    path = str(tmp_path / "tap.pcap")
    wire = MemoryWire()
    a = Stack.memory(wire.a, "198.18.0.1", pcap=path)      # the public way: pcap=
    b = Stack.memory(wire.b, "198.18.0.2")
    writer = a.pcap
    assert isinstance(writer, PcapWriter)
    on_wire: list[bytes] = []
    wire.tap(lambda direction, packet: on_wire.append(packet))

    async def main() -> None:
        async with a, b:
            assert isinstance(a.link, PcapTap)
            assert a.link.mtu == 1500 and a.link.stats is wire.a.stats   # forwarded
            await _exchange(a, b)
            assert not writer.closed
        assert writer.closed   # closing the link closed the writer

    before = time.time()
    asyncio.run(main())
    back = read_pcap(path)
    assert [p for _, p in back] == on_wire   # every packet, in both directions, in order
    assert all(before <= ts <= time.time() for ts, _ in back)
    lines = tcpdump(path)
    flags = [line.split("Flags [")[1].split("]")[0] for line in lines]
    assert flags[:3] == ["S", "S.", "."], lines
    assert flags.count("F.") == 2
    assert sum(" > 198.18.0.2.7:" in line for line in lines) >= 4   # a -> b
    assert sum("198.18.0.2.7 > " in line for line in lines) >= 4    # b -> a


def test_pcap_tap_keeps_the_stack_running_when_the_capture_fails() -> None:
    disk = FillingDisk(room=24 + 100)
    writer = PcapWriter(disk, flush_interval=0)
    a, b, _wire = Stack.memory_pair()
    a._link_factory = tap_factory(a._link_factory, writer)

    async def main() -> None:
        async with a, b:
            await _exchange(a, b)   # completes although the capture failed after 1 packet

    asyncio.run(main())
    assert writer.error is not None and writer.packets == 1 and writer.dropped > 5
