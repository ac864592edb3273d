"""Two link ends joined in memory, for tests: ustack talking to ustack with no kernel in between.

``wire = MemoryWire()`` gives ``wire.a`` and ``wire.b``, each with the API of
:class:`~ustack.link.fd.FdLink` (start / send / send_many / close / stats / mtu).  What one end
sends reaches the other end's ``on_packets`` on the next loop iteration: the packets of a burst
are collected and handed over in one ``loop.call_soon`` call, as a TUN read batch would be.

Hooks, for loss and trace tests::

    wire.tap(lambda direction, packet: trace.append((direction, packet)))   # sees every packet
    wire.drop_if(lambda direction, packet: direction == "a->b" and is_syn(packet))

``direction`` is ``"a->b"`` or ``"b->a"``.  Taps see every packet as sent, before any
``drop_if`` predicate decides whether the wire loses it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

__all__ = ["MemoryLink", "MemoryWire"]

Hook = Callable[[str, bytes], object]


class MemoryLink:
    """One end of a :class:`MemoryWire`."""

    def __init__(self, wire: MemoryWire, direction: str, mtu: int) -> None:
        self._wire = wire
        self.direction = direction  # of what this end sends, "a->b" or "b->a"
        self.mtu = mtu
        self.peer: MemoryLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_packets: Callable[[list[bytes]], None] | None = None
        self._inbox: list[bytes] = []  # arrived, not yet handed to on_packets
        self._scheduled = False
        self._closed = False
        self.stats: dict[str, int] = {
            "rx_packets": 0,
            "tx_packets": 0,
            "tx_queued": 0,
            "tx_queue_peak": 0,
            "rx_errors": 0,
            "tx_errors": 0,
            "tx_dropped": 0,  # lost on the wire (drop_if), or the far end was closed
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self, loop: asyncio.AbstractEventLoop, on_packets: Callable[[list[bytes]], None]) -> None:
        """Deliver arriving packets to ``on_packets(list)`` on ``loop``, one call per burst.

        Packets that arrived before start() are delivered right after it.
        """
        if self._closed:
            raise RuntimeError("link is closed")
        if self._loop is not None:
            raise RuntimeError("link already started")
        self._loop = loop
        self._on_packets = on_packets
        if self._inbox:
            self._schedule()

    def send(self, packet: bytes) -> None:
        self._wire._carry(self, packet)

    def send_many(self, packets: Iterable[bytes]) -> None:
        carry = self._wire._carry
        for packet in packets:
            carry(self, packet)

    def close(self) -> None:
        """Stop delivering to this end; what it or its peer sends from now on is lost.  Idempotent."""
        self._closed = True
        self._inbox.clear()

    # -- the far end's side --------------------------------------------------------------------
    def _arrive(self, packet: bytes) -> None:
        self._inbox.append(packet)
        if not self._scheduled and self._loop is not None:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        self._loop.call_soon(self._deliver)  # type: ignore[union-attr]

    def _deliver(self) -> None:
        self._scheduled = False
        if self._closed or not self._inbox:
            return
        packets, self._inbox = self._inbox, []
        self.stats["rx_packets"] += len(packets)
        self._on_packets(packets)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<MemoryLink {self.direction} mtu={self.mtu}{' closed' if self._closed else ''}>"


class MemoryWire:
    """Two :class:`MemoryLink` ends, ``a`` and ``b``, joined in memory."""

    def __init__(self, *, mtu: int = 1500) -> None:
        self.a = MemoryLink(self, "a->b", mtu)
        self.b = MemoryLink(self, "b->a", mtu)
        self.a.peer, self.b.peer = self.b, self.a
        self._taps: list[Hook] = []
        self._drops: list[Callable[[str, bytes], bool]] = []

    def tap(self, fn: Hook) -> Hook:
        """Call ``fn(direction, packet)`` for every packet sent on either end.  Returns ``fn``."""
        self._taps.append(fn)
        return fn

    def drop_if(self, pred: Callable[[str, bytes], bool]) -> Callable[[str, bytes], bool]:
        """Lose every packet for which ``pred(direction, packet)`` is true.  Returns ``pred``."""
        self._drops.append(pred)
        return pred

    def remove_hook(self, fn: Callable[..., object]) -> None:
        """Take away a tap or drop predicate added earlier."""
        if fn in self._taps:
            self._taps.remove(fn)
        if fn in self._drops:
            self._drops.remove(fn)

    def _carry(self, src: MemoryLink, packet: bytes) -> None:
        if type(packet) is not bytes:
            packet = bytes(packet)  # the sender may reuse its buffer before delivery
        if src._closed:
            src.stats["tx_dropped"] += 1
            return
        src.stats["tx_packets"] += 1
        direction = src.direction
        for fn in self._taps:
            fn(direction, packet)
        for pred in self._drops:
            if pred(direction, packet):
                src.stats["tx_dropped"] += 1
                return
        dst = src.peer
        if dst._closed:  # type: ignore[union-attr]
            src.stats["tx_dropped"] += 1
            return
        dst._arrive(packet)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<MemoryWire a={self.a!r} b={self.b!r}>"
