"""Whole IP packets in and out of a non-blocking fd that keeps packet boundaries (TUN, SEQPACKET).

Reading is driven by ``loop.add_reader``: each wake-up reads up to ``batch`` packets (until EAGAIN)
and hands them to ``on_packets`` in one synchronous call — no task, queue or future per packet.
Writing is a plain ``os.write``; when the fd would block (EAGAIN, or ENOBUFS) the packet and every
later one wait in a FIFO that is flushed when the fd is writable again, so order is kept and
nothing is lost.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable

from ustack.wire import GsoPacket

__all__ = ["FdLink"]

log = logging.getLogger("ustack.link")

# An IPv4 packet is at most 65535 bytes; reading less than a whole packet truncates it silently
# (TUN and SEQPACKET both do), and a 64 KiB read costs no more than a 1500-byte one.
_MAX_PACKET = 65535
# How long to wait before writing again after ENOBUFS, which poll() does not announce the end of.
_ENOBUFS_RETRY = 0.001

# struct virtio_net_hdr (a TUN device opened with IFF_VNET_HDR puts one before each packet, both
# ways): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, little-endian.
VNET_HDR_LEN = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
_VNET_PLAIN = bytes(VNET_HDR_LEN)


VIRTIO_NET_HDR_GSO_TCPV4 = 1
_VNET = struct.Struct("<BBHHHH")


def _vnet_write(fd: int, packet: bytes) -> int:
    """Write one packet behind its virtio-net header: empty for a whole, checksummed packet;
    for a TCP super-segment (ustack.wire.GsoPacket) the kernel is told to cut it into
    gso_size segments and finish their checksums (TSO, NEEDS_CSUM)."""
    if type(packet) is not GsoPacket:
        return os.writev(fd, (_VNET_PLAIN, packet)) - VNET_HDR_LEN
    gso = packet.gso_size
    ihl = (packet[0] & 0x0F) * 4
    hdr = _VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                     ihl + (packet[ihl + 12] >> 4) * 4, gso, ihl, 16)
    return os.writev(fd, (hdr, packet)) - VNET_HDR_LEN


class FdLink:
    """Packet-at-a-time I/O on a non-blocking fd that preserves packet boundaries."""

    def __init__(self, fd: int, *, mtu: int = 1500, batch: int = 64, close_fd: bool = True,
                 vnet_hdr: bool = False) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._fd = fd
        # IFF_VNET_HDR: a virtio-net header before each packet.  Received packets may then be
        # super-segments (GSO) with partial checksums: on_packets gets a second list saying so
        self.vnet_hdr = vnet_hdr
        self._write = _vnet_write if vnet_hdr else os.write
        self.mtu = mtu
        self.batch = batch
        self._close_fd = close_fd
        self._read_size = max(mtu, _MAX_PACKET) + (VNET_HDR_LEN if vnet_hdr else 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_packets: Callable[[list[bytes]], None] | None = None
        self._txq: deque[bytes] = deque()
        self._armed: str | None = None  # "writer" (add_writer) or "timer" (ENOBUFS retry)
        self._retry_handle: asyncio.TimerHandle | None = None
        self._reading = False
        self._closed = False
        self._errnos_logged: set[int] = set()
        self.stats: dict[str, int] = {
            "rx_packets": 0,
            "tx_packets": 0,
            "tx_queued": 0,  # packets that had to wait in the queue
            "tx_queue_peak": 0,
            "rx_errors": 0,
            "rx_gso": 0,      # super-segments received (offloads)
            "tx_errors": 0,  # refused by the fd (say EINVAL for a malformed packet on TUN)
            "tx_dropped": 0,  # sent after close()
        }

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def reading(self) -> bool:
        """Whether received packets are being delivered (False before start, after EOF or close)."""
        return self._reading

    @property
    def tx_queue_len(self) -> int:
        """Packets waiting for the fd to become writable."""
        return len(self._txq)

    # -- receiving ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, on_packets: Callable[[list[bytes]], None]) -> None:
        """Deliver received packets to ``on_packets(list)`` on ``loop``, one call per batch."""
        if self._closed:
            raise RuntimeError("link is closed")
        if self._loop is not None:
            raise RuntimeError("link already started")
        os.set_blocking(self._fd, False)
        self._loop = loop
        self._on_packets = on_packets
        loop.add_reader(self._fd, self._on_readable)
        self._reading = True
        if self._txq:
            self._wait_writable()

    def _read_batch(self) -> list[bytes]:
        """Up to `batch` reads, until the fd has nothing more (or an error, or end of file)."""
        fd, size, read = self._fd, self._read_size, os.read
        packets: list[bytes] = []
        for _ in range(self.batch):
            try:
                packet = read(fd, size)
            except BlockingIOError:
                break
            except OSError as exc:
                self.stats["rx_errors"] += 1
                self._log_once(exc, "read")
                break
            if not packet:
                # End of file: the other end of a socket went away (a TUN fd never says this).
                self._stop_reading()
                break
            packets.append(packet)
        return packets

    def _on_readable(self) -> None:
        packets = self._read_batch()
        if not packets:
            return
        if self.vnet_hdr:
            self._deliver_vnet(packets)
            return
        self.stats["rx_packets"] += len(packets)
        self._on_packets(packets)  # type: ignore[misc]

    def _deliver_vnet(self, raws: list[bytes]) -> None:
        """Packets behind virtio-net headers: `on_packets(packets, meta)`, where meta[i] is
        None for a whole packet or (checksum partial, gso_size) for an offloaded one."""
        packets: list[bytes] = []
        meta: list[tuple[bool, int] | None] = []
        gso = 0
        for raw in raws:
            if len(raw) <= VNET_HDR_LEN:
                self.stats["rx_errors"] += 1
                continue
            flags, gso_type = raw[0], raw[1]
            packets.append(raw[VNET_HDR_LEN:])
            if flags or gso_type:
                gso_size = (raw[4] | raw[5] << 8) if gso_type != VIRTIO_NET_HDR_GSO_NONE else 0
                gso += gso_size != 0
                meta.append((bool(flags & VIRTIO_NET_HDR_F_NEEDS_CSUM), gso_size))
            else:
                meta.append(None)
        if packets:
            self.stats["rx_packets"] += len(packets)
            self.stats["rx_gso"] += gso
            self._on_packets(packets, meta)  # type: ignore[misc,call-arg]

    def poll(self) -> None:
        """Read what has already arrived, now (the stack calls this before its timers run, so
        a packet that came in before a timeout is seen before the timeout fires)."""
        if self._reading:
            self._on_readable()

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._reading = False

    # -- sending ------------------------------------------------------------------------------
    def send(self, packet: bytes) -> None:
        """Write one packet now, or queue it behind earlier ones if the fd would block."""
        if self._txq or self._closed:
            self._enqueue((packet,))
            return
        try:
            self._write(self._fd, packet)
        except BlockingIOError:
            self._enqueue((packet,))
            self._wait_writable()
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self._enqueue((packet,))
                self._retry_later()
            else:
                self._tx_error(exc)
        else:
            self.stats["tx_packets"] += 1

    def send_many(self, packets: Iterable[bytes]) -> None:
        """Write packets in order; those the fd cannot take now are queued, in order."""
        if self._txq or self._closed:
            self._enqueue(packets)
            return
        packets = list(packets)
        fd, write = self._fd, self._write
        sent = 0
        for i, packet in enumerate(packets):
            try:
                write(fd, packet)
            except BlockingIOError:
                self._enqueue(packets[i:])
                self._wait_writable()
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._enqueue(packets[i:])
                    self._retry_later()
                    break
                self._tx_error(exc)
            else:
                sent += 1
        self.stats["tx_packets"] += sent

    def _enqueue(self, packets: Iterable[bytes]) -> None:
        if self._closed:
            self.stats["tx_dropped"] += len(list(packets))
            return
        q = self._txq
        before = len(q)
        # Copy anything mutable: the caller may reuse its buffer before we get to write it.
        q.extend(p if type(p) is bytes else bytes(p) for p in packets)
        self.stats["tx_queued"] += len(q) - before
        if len(q) > self.stats["tx_queue_peak"]:
            self.stats["tx_queue_peak"] = len(q)

    def _wait_writable(self) -> None:
        if self._armed or self._loop is None:
            return  # already waiting, or start() will arm it
        self._loop.add_writer(self._fd, self._flush)
        self._armed = "writer"

    def _retry_later(self) -> None:
        if self._armed or self._loop is None:
            return
        self._retry_handle = self._loop.call_later(_ENOBUFS_RETRY, self._retry)
        self._armed = "timer"

    def _retry(self) -> None:
        self._armed = None
        self._retry_handle = None
        self._flush()

    def _flush(self) -> None:
        """Write queued packets until the queue is empty or the fd would block again."""
        if self._closed:
            return
        q, fd, write = self._txq, self._fd, self._write
        sent = 0
        while q:
            try:
                write(fd, q[0])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._disarm()
                    self._retry_later()
                    break
                self._tx_error(exc)
            else:
                sent += 1
            q.popleft()
        self.stats["tx_packets"] += sent
        if not q:
            self._disarm()
        elif not self._armed:
            self._wait_writable()

    def _disarm(self) -> None:
        if self._armed == "writer":
            self._loop.remove_writer(self._fd)  # type: ignore[union-attr]
        elif self._armed == "timer":
            self._retry_handle.cancel()  # type: ignore[union-attr]
            self._retry_handle = None
        self._armed = None

    def _tx_error(self, exc: OSError) -> None:
        self.stats["tx_errors"] += 1
        self._log_once(exc, "write")

    def _log_once(self, exc: OSError, op: str) -> None:
        if exc.errno not in self._errnos_logged:
            self._errnos_logged.add(exc.errno)
            log.warning("%s on fd %d failed: %s (from now on this error is only counted in stats)",
                        op, self._fd, exc)

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop reading and writing, drop what is queued, close the fd if we own it.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._stop_reading()
            self._disarm()
        self._armed = None
        self.stats["tx_dropped"] += len(self._txq)
        self._txq.clear()
        if self._close_fd:
            os.close(self._fd)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} fd={self._fd} mtu={self.mtu} {state}>"
