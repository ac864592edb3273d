"""Packet captures in the classic libpcap format, which tcpdump and Wireshark read.

A TUN device carries bare IP packets, so the files are written with link type LINKTYPE_RAW
(101): every record is one IPv4 or IPv6 packet, with no link-layer header.

    with PcapWriter("ustack.pcap") as writer:
        writer.write(packet, time.time())      # every packet in and out of the link

    link = PcapTap(link, writer)               # or let a wrapper around a link do it

The file format (https://www.tcpdump.org/manpages/pcap-savefile.5.html):

- a 24-byte file header: magic number, version 2.4, time zone offset (0), timestamp accuracy
  (0), snapshot length, link type;
- per packet a 16-byte record header: seconds, microseconds (nanoseconds with the nanosecond
  magic), bytes captured (at most the snapshot length), bytes on the wire; then the bytes.

The byte order is the writer's; a reader tells it by the magic number.  PcapWriter writes the
native byte order with microsecond timestamps, as libpcap does; read_pcap reads both byte
orders and both timestamp resolutions.

A capture must never take the network stack down: once construction succeeded, PcapWriter.write
does not raise.  A write error (full disk, the reading end of a pipe gone) stops the capture,
is kept in `error`, and later packets are only counted in `dropped`.
"""
from __future__ import annotations

import errno
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

__all__ = ["LINKTYPE_RAW", "PcapTap", "PcapWriter", "read_pcap", "tap_factory"]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101          # raw IPv4 or IPv6, told apart by the version nibble
LINKTYPE_LINUX_SLL = 113    # tcpdump -i any ("Linux cooked capture")
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

_FILE_HEADER = "IHHiIII"    # magic, major, minor, thiszone, sigfigs, snaplen, network
_RECORD_HEADER = "IIII"     # ts_sec, ts_frac, incl_len, orig_len
_NATIVE_RECORD = struct.Struct("=" + _RECORD_HEADER)


class PcapWriter:
    """Writes packets to a pcap file (LINKTYPE_RAW, microsecond timestamps).

    `path_or_fileobj` is a path (created or truncated), ``"-"`` for standard output, or a
    binary file object opened for writing (it is closed by close() only if it was opened here).
    Failing to open the path, or to write the file header, raises OSError at construction
    with a message that names the file.

    Packets longer than `snaplen` are cut to it (the record keeps the length on the wire).
    Output is buffered; it is flushed by flush(), close(), and on its own when a packet's
    timestamp is `flush_interval` seconds or more after the last flush (None: never on its own),
    so a file that is being written can be read while the capture runs.

    Attributes: `packets` (records written), `dropped` (packets not written because of an
    error or after close), `error` (the OSError that stopped the capture, or None).
    """

    def __init__(self, path_or_fileobj: str | os.PathLike[str] | IO[bytes],
                 snaplen: int = 65535, *, linktype: int = LINKTYPE_RAW,
                 flush_interval: float | None = 1.0) -> None:
        if not 1 <= snaplen <= 0x7FFFFFFF:
            raise ValueError(f"snaplen must be between 1 and {0x7FFFFFFF}, not {snaplen}")
        self.snaplen = snaplen
        self.linktype = linktype
        self.flush_interval = flush_interval
        self.packets = 0
        self.dropped = 0
        self.error: OSError | None = None
        self.closed = False
        self._last_flush = float("-inf")
        if isinstance(path_or_fileobj, (str, os.PathLike)):
            self.name = os.fspath(path_or_fileobj)
            if self.name == "-":
                self._file: IO[bytes] = sys.stdout.buffer
                self._owned = False
            else:
                try:
                    self._file = open(self.name, "wb")  # noqa: SIM115 (closed in close())
                except OSError as e:
                    raise OSError(e.errno, f"cannot open pcap file {self.name}: "
                                           f"{e.strerror or e}", self.name) from None
                self._owned = True
        else:
            self._file = path_or_fileobj
            self.name = str(getattr(path_or_fileobj, "name", "<file object>"))
            self._owned = False
        header = struct.pack("=" + _FILE_HEADER, MAGIC_USEC, 2, 4, 0, 0, snaplen, linktype)
        try:
            self._file.write(header)
            self._file.flush()
        except (OSError, ValueError) as e:
            if self._owned:
                self._close_quietly()
            code = getattr(e, "errno", None) or errno.EIO
            raise OSError(code, f"cannot write to pcap file {self.name}: "
                                f"{getattr(e, 'strerror', None) or e}", self.name) from None

    # ---------------------------------------------------------------- writing
    def write(self, packet: bytes | bytearray | memoryview, ts: float) -> bool:
        """Add one packet seen at wall-clock time `ts` (seconds since the epoch, as
        time.time() gives).  Returns False, without raising, if it was not written: the
        writer is closed or an earlier write failed (see `error`)."""
        if self.error is not None or self.closed:
            self.dropped += 1
            return False
        length = len(packet)
        incl = min(length, self.snaplen)
        usec = max(0, round(ts * 1_000_000))
        sec, frac = divmod(usec, 1_000_000)
        try:
            self._file.write(_NATIVE_RECORD.pack(sec & 0xFFFFFFFF, frac, incl, length))
            self._file.write(packet if incl == length else bytes(packet[:incl]))
            if self.flush_interval is not None and ts - self._last_flush >= self.flush_interval:
                self._last_flush = ts
                self._file.flush()
        except (OSError, ValueError) as e:
            self._fail(e)
            self.dropped += 1
            return False
        self.packets += 1
        return True

    def flush(self) -> None:
        """Push buffered records to the file.  Never raises; a failure is kept in `error`."""
        if self.error is not None or self.closed:
            return
        try:
            self._file.flush()
        except (OSError, ValueError) as e:
            self._fail(e)

    def close(self) -> None:
        """Flush and (if it was opened here) close the file.  Idempotent; never raises."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self._owned:
            self._close_quietly()

    def _fail(self, e: Exception) -> None:
        # ValueError: the file object was closed under us (e.g. a wrapper closed it)
        self.error = e if isinstance(e, OSError) else OSError(errno.EBADF, str(e))
        if self._owned:
            self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self._file.close()
        except (OSError, ValueError):
            # closing flushes what is left in the buffer; the error is the same one again
            pass

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("failed" if self.error else "open")
        return f"<PcapWriter {self.name} {state} packets={self.packets} dropped={self.dropped}>"


# -------------------------------------------------------------------- reading
def read_pcap(path_or_fileobj: str | os.PathLike[str] | IO[bytes]) -> list[tuple[float, bytes]]:
    """The packets of a classic pcap file as (timestamp in seconds, IP packet) pairs.

    Reads both byte orders and microsecond or nanosecond timestamps.  Records are returned as
    captured (possibly cut to the file's snapshot length).  Besides LINKTYPE_RAW, captures of
    Ethernet, Linux cooked (tcpdump -i any) and the IPv4/IPv6 link types are accepted: their
    link-layer header is removed and records that are not IP are left out, so the result is
    always IP packets.  A record cut short at the end of the file (a capture still being
    written) is left out.  ValueError if the data is not a classic pcap file.
    """
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        with open(path_or_fileobj, "rb") as f:
            data = f.read()
    else:
        data = path_or_fileobj.read()
    if len(data) < 24:
        raise ValueError("not a pcap file: shorter than the 24-byte file header")
    magic = data[:4]
    if magic == _PCAPNG_MAGIC:
        raise ValueError("this is a pcapng file; convert it with "
                         "'tcpdump -r in.pcapng -w out.pcap' or editcap -F pcap")
    for order in ("<", ">"):
        (value,) = struct.unpack(order + "I", magic)
        if value in (MAGIC_USEC, MAGIC_NSEC):
            break
    else:
        raise ValueError(f"not a pcap file: magic number {magic.hex()}")
    divisor = 1e9 if value == MAGIC_NSEC else 1e6
    linktype = struct.unpack(order + _FILE_HEADER, data[:24])[6] & 0xFFFF
    strip = _link_stripper(linktype)
    record = struct.Struct(order + _RECORD_HEADER)
    out: list[tuple[float, bytes]] = []
    pos = 24
    end = len(data)
    while pos + 16 <= end:
        sec, frac, incl, _orig = record.unpack_from(data, pos)
        pos += 16
        if pos + incl > end:
            break
        packet = strip(data[pos:pos + incl])
        pos += incl
        if packet is not None:
            out.append((sec + frac / divisor, packet))
    return out


def _link_stripper(linktype: int) -> Callable[[bytes], bytes | None]:
    """A function from one record of `linktype` to its IP packet (None: not IP)."""
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return lambda rec: rec
    if linktype == LINKTYPE_ETHERNET:
        def ethernet(rec: bytes) -> bytes | None:
            pos, ethertype = 12, 0
            while pos + 2 <= len(rec):
                ethertype = int.from_bytes(rec[pos:pos + 2], "big")
                if ethertype in (0x8100, 0x88A8):   # VLAN tags
                    pos += 4
                    continue
                break
            return rec[pos + 2:] if ethertype in (0x0800, 0x86DD) else None
        return ethernet
    if linktype == LINKTYPE_LINUX_SLL:
        def cooked(rec: bytes) -> bytes | None:
            proto = int.from_bytes(rec[14:16], "big") if len(rec) >= 16 else 0
            return rec[16:] if proto in (0x0800, 0x86DD) else None
        return cooked
    raise ValueError(f"pcap link type {linktype} is not supported (raw IP, Ethernet and "
                     "Linux cooked captures are)")


# -------------------------------------------------------------------- a link that records
class PcapTap:
    """A link wrapper that records every packet into a PcapWriter, then passes it on.

    ``PcapTap(link, writer)`` has the wrapped link's API: start(loop, on_packets), send,
    send_many and close are forwarded after recording (packets received from the link before
    the stack sees them, packets sent before the link takes them); every other attribute
    (mtu, stats, poll, closed, fileno, ...) is the wrapped link's own.  Timestamps come from
    `clock` (default time.time), read once per batch.

    close() closes the link and then the writer, unless `close_writer` is False.  Recording
    never raises into the stack: a writer that failed keeps its error and drops the rest.
    """

    def __init__(self, link: Any, writer: PcapWriter, *, close_writer: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.link = link
        self.writer = writer
        self.close_writer = close_writer
        self.clock = clock

    def start(self, loop: Any, on_packets: Callable[[list[bytes]], None]) -> None:
        """Start the wrapped link; what it receives is recorded, then given to on_packets."""
        write = self.writer.write
        clock = self.clock

        def received(packets: list[bytes], *meta: Any) -> None:
            ts = clock()
            for packet in packets:
                write(packet, ts)
            on_packets(packets, *meta)     # meta: an offloading link's per-packet notes

        self.link.start(loop, received)

    def send(self, packet: bytes) -> None:
        self.writer.write(packet, self.clock())
        self.link.send(packet)

    def send_many(self, packets: Iterable[bytes]) -> None:
        if not isinstance(packets, (list, tuple)):
            packets = list(packets)
        ts = self.clock()
        write = self.writer.write
        for packet in packets:
            write(packet, ts)
        self.link.send_many(packets)

    def close(self) -> None:
        """Close the wrapped link, then (with close_writer) the writer.  Idempotent."""
        try:
            self.link.close()
        finally:
            if self.close_writer:
                self.writer.close()
            else:
                self.writer.flush()

    def __getattr__(self, name: str) -> Any:
        # only called for attributes PcapTap itself does not have
        if name == "link":   # not set yet (copy / unpickle): do not recurse
            raise AttributeError(name)
        return getattr(self.link, name)

    def __repr__(self) -> str:
        return f"<PcapTap {self.link!r} -> {self.writer!r}>"


def tap_factory(factory: Callable[[], Any], writer: PcapWriter) -> Callable[[], Any]:
    """Wrap a Stack link factory so that the link it makes is recorded into `writer`."""
    def make() -> PcapTap:
        return PcapTap(factory(), writer)
    return make
