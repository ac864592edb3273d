"""Links move whole IP packets between ustack and something else; nothing above them does I/O.

- :class:`FdLink`: any non-blocking fd that keeps packet boundaries (a TUN device, a SEQPACKET socket).
- :class:`TunLink`: an FdLink on a TUN device it creates; the Linux kernel is on the other side.
- :class:`MemoryWire`: two :class:`MemoryLink` ends joined in memory, with tap and drop hooks.
- :mod:`ustack.link.impair`: loss, duplication, corruption, delay and reordering on the way
  (:class:`Impairment`, a :class:`Relay` between two links, an :class:`ImpairedLink` for a Stack).

Every link has the shape of :class:`Link`: ``start(loop, on_packets)`` hands received packets to
``on_packets(list_of_bytes)`` once per batch, synchronously on the loop; ``send`` and
``send_many`` never block and never reorder; ``close()`` is idempotent.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from .fd import FdLink
from .impair import ImpairedLink, Impairment, KernelPair, Relay
from .memory import MemoryLink, MemoryWire
from .tun import TunLink

__all__ = ["FdLink", "ImpairedLink", "Impairment", "KernelPair", "Link", "MemoryLink",
           "MemoryWire", "Relay", "TunLink"]


@runtime_checkable
class Link(Protocol):
    """What the stack needs from a link."""

    mtu: int
    stats: dict[str, int]

    def start(self, loop: asyncio.AbstractEventLoop,
              on_packets: Callable[[list[bytes]], None]) -> None: ...

    def send(self, packet: bytes) -> None: ...

    def send_many(self, packets: Iterable[bytes]) -> None: ...

    def close(self) -> None: ...
