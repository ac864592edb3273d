"""An impairing link: loss, duplication, corruption, delay, jitter and reordering, our own netem.

Three layers, from pure to wired:

- :class:`Impairment` — one direction's model.  ``apply(packet)`` says what the wire does to one
  packet: a list of ``(delay_ms, packet)`` copies to deliver (empty when lost).  It is pure: no
  clock, no I/O, all randomness from its own seeded ``random.Random``; it counts what it did in
  ``stats``.
- :class:`Relay` — moves whole IPv4 packets between two links (anything with the
  :class:`~ustack.link.Link` shape: TUN devices, fds, memory wires) on an asyncio loop, one
  Impairment per direction; delayed copies wait in a heap behind one loop timer per direction.
- :class:`ImpairedLink` — a link wrapped so that what goes in and out of it passes an Impairment:
  give it to :class:`~ustack.Stack` to put ustack on an impaired link.

And two set-ups built from them:

- :class:`KernelPair` — two private network namespaces, A and B, each with a TUN device, and a
  Relay between the devices: a kernel socket in A talks to a kernel socket in B through the
  impairment (A 198.18.1.1, B 198.18.1.2 by default, a /32 each and a host route to the other
  through the TUN device).  Nothing is added to the caller's namespace.
- :func:`impaired_tun_stack` — ``Stack`` on an :class:`ImpairedLink` over a new TUN device in
  the current (private) namespace: the kernel there on one side, ustack on the other.

Example (ustack on a lossy link, in a private namespace)::

    async def main():
        stack = impaired_tun_stack(to_kernel=Impairment(loss=0.01, seed=1),
                                   from_kernel=Impairment(loss=0.01, seed=2))
        async with stack:
            ...                       # stack.open_connection("198.18.0.1", port), ...
            print(stack.link.impair_stats)  # {"out": {...}, "in": {...}}: dropped, corrupted...

    with Netns():
        asyncio.run(main())

Corruption flips one byte of the TCP segment (of the fixed header but its data-offset byte, or
of the payload; see :func:`corrupt_tcp`) of an unfragmented IPv4/TCP packet, so the TCP
checksum fails and the receiver must count ``TcpInCsumErrors`` and drop it; other packets are
never corrupted.  A one-byte change moves a 16-bit word by less than 0xFFFF, so a
ones'-complement checksum always notices.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import random
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Impairment", "ImpairedLink", "KernelPair", "Relay", "corrupt_tcp", "impaired_tun_stack",
           "symmetric"]

_IPPROTO_TCP = 6
_STAT_NAMES = ("packets", "dropped", "duplicated", "corrupted", "delayed", "reordered",
               "delivered")


class Impairment:
    """What one direction of the wire does to packets.  Pure and seedable.

    ``loss``, ``duplicate``, ``corrupt`` and ``reorder`` are probabilities (0..1) per packet;
    ``delay_ms`` is added to every packet, with ``jitter_ms`` uniform either way (jitter, as
    netem's, can reorder); a packet picked for reordering is held back a further uniform
    ``reorder_ms[0]..reorder_ms[1]`` ms so later packets overtake it.  Decisions in this order:
    loss (nothing delivered), duplication (two copies), then per copy corruption and delay.

    ``stats`` counts packets seen, dropped, duplicated (extra copies made), corrupted (copies),
    delayed (copies with any delay), reordered (copies held back), delivered (copies handed on).
    """

    def __init__(self, *, loss: float = 0.0, duplicate: float = 0.0, corrupt: float = 0.0,
                 delay_ms: float = 0.0, jitter_ms: float = 0.0, reorder: float = 0.0,
                 reorder_ms: tuple[float, float] = (2.0, 8.0), seed: int | None = None) -> None:
        for name, p in (("loss", loss), ("duplicate", duplicate), ("corrupt", corrupt),
                        ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability (0..1), not {p!r}")
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        lo, hi = reorder_ms
        if not 0 < lo <= hi:
            raise ValueError(f"reorder_ms must be (low, high) with 0 < low <= high, not {reorder_ms!r}")
        self.loss = loss
        self.duplicate = duplicate
        self.corrupt = corrupt
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self.reorder = reorder
        self.reorder_ms = (float(lo), float(hi))
        self.seed = seed
        self._rng = random.Random(seed)
        self.stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)

    @property
    def active(self) -> bool:
        """False when every packet passes untouched at once (the relay then skips the model)."""
        return bool(self.loss or self.duplicate or self.corrupt or self.delay_ms
                    or self.jitter_ms or self.reorder)

    def apply(self, packet: bytes) -> list[tuple[float, bytes]]:
        """The copies of ``packet`` to deliver, each with its delay in ms (0: at once)."""
        stats = self.stats
        stats["packets"] += 1
        rnd = self._rng.random
        if self.loss and rnd() < self.loss:
            stats["dropped"] += 1
            return []
        copies = 1
        if self.duplicate and rnd() < self.duplicate:
            copies = 2
            stats["duplicated"] += 1
        out = []
        for _ in range(copies):
            data = packet
            if self.corrupt and rnd() < self.corrupt:
                flipped = corrupt_tcp(packet, self._rng)
                if flipped is not None:
                    data = flipped
                    stats["corrupted"] += 1
            delay = self.delay_ms
            if self.jitter_ms:
                delay = max(0.0, delay + self._rng.uniform(-self.jitter_ms, self.jitter_ms))
            if self.reorder and rnd() < self.reorder:
                delay += self._rng.uniform(*self.reorder_ms)
                stats["reordered"] += 1
            if delay > 0:
                stats["delayed"] += 1
            out.append((delay, data))
        stats["delivered"] += len(out)
        return out

    def describe(self) -> str:
        """A short text like ``loss 1%, reorder 25% (2-8 ms)``, or ``none``."""
        parts = []
        for name, p in (("loss", self.loss), ("duplicate", self.duplicate),
                        ("corrupt", self.corrupt)):
            if p:
                parts.append(f"{name} {p * 100:g}%")
        if self.delay_ms or self.jitter_ms:
            parts.append(f"delay {self.delay_ms:g} ms" +
                         (f" ± {self.jitter_ms:g} ms" if self.jitter_ms else ""))
        if self.reorder:
            lo, hi = self.reorder_ms
            parts.append(f"reorder {self.reorder * 100:g}% ({lo:g}-{hi:g} ms)")
        return ", ".join(parts) or "none"

    def __repr__(self) -> str:
        return f"<Impairment {self.describe()} seed={self.seed}>"


def symmetric(seed: int = 0, **params: Any) -> tuple[Impairment, Impairment]:
    """The same impairment for both directions, with different seeds (``seed``, ``seed + 1``)."""
    return Impairment(seed=seed, **params), Impairment(seed=seed + 1, **params)


def corrupt_tcp(packet: bytes, rng: random.Random) -> bytes | None:
    """``packet`` with one byte of its TCP segment XORed with a random non-zero value, or None
    if it is not an unfragmented IPv4/TCP packet with a whole TCP header.

    The byte is one of the fixed header's (not the data-offset byte: a bad data offset is a
    header error, not a checksum error) or of the payload, never of the options: Linux parses
    MD5/AO options before it verifies the checksum (tcp_inbound_hash) and drops a segment whose
    NOP became an MD5 option as TCP_AUTH_HDR, without counting a checksum error.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != _IPPROTO_TCP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if (packet[6] & 0x3F) or packet[7]:  # MF or a fragment offset: not a whole segment
        return None
    total = min(len(packet), int.from_bytes(packet[2:4], "big"))
    if ihl < 20 or total - ihl < 20:
        return None
    doff = (packet[ihl + 12] >> 4) * 4
    payload = max(0, total - ihl - doff)
    k = rng.randrange(19 + payload)  # 19 fixed-header bytes (all but byte 12), then payload
    if k >= 19:
        k = doff + (k - 19)
    elif k >= 12:
        k += 1
    out = bytearray(packet)
    out[ihl + k] ^= rng.randrange(1, 256)
    return bytes(out)


# -- on a loop --------------------------------------------------------------------------------
class _Path:
    """One direction on an asyncio loop: an Impairment, and a heap of delayed copies behind
    one timer."""

    # Delayed copies due within this much of a timer's firing go with it (the loop's timers are
    # not finer than a millisecond on uvloop).
    _SLACK = 0.0005

    def __init__(self, impairment: Impairment | None, name: str) -> None:
        self.impairment = impairment if impairment is not None else Impairment()
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Callable[[list[bytes]], None] | None = None
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closed = False
        self.held_peak = 0
        self.lost_at_close = 0

    def bind(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[bytes]], None]) -> None:
        self._loop = loop
        self._deliver = deliver

    @property
    def held(self) -> int:
        """Delayed copies not yet delivered."""
        return len(self._heap)

    def push(self, packets: list[bytes]) -> None:
        if self._closed:
            return
        imp = self.impairment
        if not imp.active:
            imp.stats["packets"] += len(packets)
            imp.stats["delivered"] += len(packets)
            self._deliver(packets)  # type: ignore[misc]
            return
        now_out: list[bytes] = []
        apply = imp.apply
        heap = self._heap
        base: float | None = None
        for packet in packets:
            for delay, data in apply(packet):
                if delay <= 0:
                    now_out.append(data)
                else:
                    if base is None:
                        base = self._loop.time()  # type: ignore[union-attr]
                    heapq.heappush(heap, (base + delay / 1000.0, next(self._seq), data))
        if now_out:
            self._deliver(now_out)  # type: ignore[misc]
        if heap:
            if len(heap) > self.held_peak:
                self.held_peak = len(heap)
            self._arm()

    def _arm(self) -> None:
        due = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._fire)  # type: ignore[union-attr]

    def _fire(self) -> None:
        self._timer = None
        if self._closed:
            return
        heap = self._heap
        limit = self._loop.time() + self._SLACK  # type: ignore[union-attr]
        out = []
        while heap and heap[0][0] <= limit:
            out.append(heapq.heappop(heap)[2])
        if out:
            self._deliver(out)  # type: ignore[misc]
        if heap and not self._closed:
            self._arm()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lost_at_close += len(self._heap)
        self._heap.clear()

    def stats(self) -> dict[str, int]:
        out = dict(self.impairment.stats)
        out["held"] = len(self._heap)
        out["held_peak"] = self.held_peak
        return out


class Relay:
    """Moves packets between links ``a`` and ``b`` through one Impairment per direction.

    ``Relay(a, b, a_to_b=..., b_to_a=...)``; ``start()`` (on a running loop) starts both links
    with the relay as their receiver; ``close()`` cancels what is held and closes both links
    (the relay owns them).  ``stats`` is ``{"a->b": {...}, "b->a": {...}}`` with the
    Impairment's counters plus ``held`` (delayed copies now in flight) and ``held_peak``.
    Usable as ``async with Relay(...):`` too.
    """

    def __init__(self, a: Any, b: Any, *, a_to_b: Impairment | None = None,
                 b_to_a: Impairment | None = None) -> None:
        self.a = a
        self.b = b
        self._ab = _Path(a_to_b, "a->b")
        self._ba = _Path(b_to_a, "b->a")
        self._started = False
        self._closed = False

    @property
    def a_to_b(self) -> Impairment:
        return self._ab.impairment

    @property
    def b_to_a(self) -> Impairment:
        return self._ba.impairment

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self._started:
            raise RuntimeError("relay already started")
        loop = loop or asyncio.get_running_loop()
        self._ab.bind(loop, self.b.send_many)
        self._ba.bind(loop, self.a.send_many)
        self.a.start(loop, self._ab.push)
        self.b.start(loop, self._ba.push)
        self._started = True

    @property
    def held(self) -> int:
        """Delayed copies in flight, both directions."""
        return self._ab.held + self._ba.held

    async def drained(self, timeout: float = 5.0) -> bool:
        """Wait until nothing is held back (True), or ``timeout`` seconds (False)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.held:
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.002)
        return True

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return {"a->b": self._ab.stats(), "b->a": self._ba.stats()}

    def close(self) -> None:
        """Cancel held copies, close both links.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ab.close()
        self._ba.close()
        self.a.close()
        self.b.close()

    async def __aenter__(self) -> Relay:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Relay a={self.a!r} b={self.b!r} a->b: {self.a_to_b.describe()}; "
                f"b->a: {self.b_to_a.describe()}>")


class ImpairedLink:
    """A link whose traffic passes Impairments: ``outbound`` for what is sent through it,
    ``inbound`` for what it receives.  Has the :class:`~ustack.link.Link` shape, so a
    :class:`~ustack.Stack` can run on it: ``Stack(lambda: ImpairedLink(TunLink.open(...),
    outbound=..., inbound=...), address)``, or :func:`impaired_tun_stack`.

    ``stats`` is the inner link's; ``impair_stats`` is ``{"out": {...}, "in": {...}}``.
    ``close()`` drops what is held back and closes the inner link.
    """

    def __init__(self, inner: Any, *, outbound: Impairment | None = None,
                 inbound: Impairment | None = None) -> None:
        self.inner = inner
        self.mtu = inner.mtu
        self._out = _Path(outbound, "out")
        self._in = _Path(inbound, "in")
        self._closed = False

    @classmethod
    def tun(cls, ifname: str = "ust0", kernel_address: str = "198.18.0.1/24", *,
            to_kernel: Impairment | None = None, from_kernel: Impairment | None = None,
            mtu: int = 1500, **kw: Any) -> ImpairedLink:
        """An ImpairedLink over a new TUN device (:meth:`TunLink.open`, which refuses the root
        namespace unless ``allow_root_namespace=True`` is passed)."""
        from .tun import TunLink
        return cls(TunLink.open(ifname, kernel_address, mtu, **kw), outbound=to_kernel,
                   inbound=from_kernel)

    @property
    def stats(self) -> dict[str, int]:
        return self.inner.stats

    @property
    def outbound(self) -> Impairment:
        return self._out.impairment

    @property
    def inbound(self) -> Impairment:
        return self._in.impairment

    @property
    def impair_stats(self) -> dict[str, dict[str, int]]:
        return {"out": self._out.stats(), "in": self._in.stats()}

    @property
    def held(self) -> int:
        return self._out.held + self._in.held

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self, loop: asyncio.AbstractEventLoop,
              on_packets: Callable[[list[bytes]], None]) -> None:
        self._out.bind(loop, self.inner.send_many)
        self._in.bind(loop, on_packets)
        self.inner.start(loop, self._in.push)

    def send(self, packet: bytes) -> None:
        self._out.push([packet if type(packet) is bytes else bytes(packet)])

    def send_many(self, packets: Iterable[bytes]) -> None:
        self._out.push([p if type(p) is bytes else bytes(p) for p in packets])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.close()
        self._in.close()
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # ifname, kernel_address, fileno, tx_queue_len...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return (f"<ImpairedLink {self.inner!r} out: {self.outbound.describe()}; "
                f"in: {self.inbound.describe()}>")


def impaired_tun_stack(ifname: str = "ust0", address: str = "198.18.0.2",
                       kernel_address: str = "198.18.0.1/24",
                       sysctl: dict[str, Any] | None = None, *,
                       to_kernel: Impairment | None = None,
                       from_kernel: Impairment | None = None, mtu: int = 1500,
                       secret: bytes | None = None, allow_root_namespace: bool = False) -> Any:
    """``Stack.tun(...)`` with the TUN device wrapped in an :class:`ImpairedLink`: what ustack
    sends passes ``to_kernel``, what the kernel sends passes ``from_kernel``.  Once started,
    ``stack.link`` is the ImpairedLink (``stack.link.impair_stats``)."""
    from ustack.aio.stack import Stack

    def factory() -> ImpairedLink:
        return ImpairedLink.tun(ifname, kernel_address, to_kernel=to_kernel,
                                from_kernel=from_kernel, mtu=mtu,
                                allow_root_namespace=allow_root_namespace)
    return Stack(factory, address, sysctl=sysctl, mtu=mtu, secret=secret)


# -- two kernels through the relay -----------------------------------------------------------
def _detached_namespace() -> int:
    """A new private network namespace (lo up) that no thread is in: returns an fd to it, which
    keeps it alive until closed.  Made on a throwaway thread, so the caller never moves."""
    from ustack.netns import Netns

    box: list[Any] = []

    def work() -> None:
        try:
            with Netns() as ns:
                box.append(os.dup(ns.fileno()))
        except BaseException as exc:  # handed back below
            box.append(exc)

    worker = threading.Thread(target=work, name="ustack-impair-netns")
    worker.start()
    worker.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


class KernelPair:
    """Two private network namespaces, A and B, each with a TUN device, joined by a Relay.

    ``with KernelPair(a_to_b=..., b_to_a=...) as pair:`` creates both namespaces (the calling
    thread stays where it is), a TUN device in each with a /32 address (``a_address``,
    ``b_address``) and a host route to the other's address through the device, so that what
    A's kernel sends to B goes into A's device, where the relay reads it and writes it into B's
    device (and back).  ``pair.relay`` is started by :meth:`start` (on a running loop; the
    ``async with`` form does it).  Make kernel sockets inside with ``pair.socket("a")`` (or any
    code in ``with pair.entered("b"):``).  Leaving closes the relay, both devices and both
    namespaces.
    """

    def __init__(self, a_address: str = "198.18.1.1", b_address: str = "198.18.1.2", *,
                 a_to_b: Impairment | None = None, b_to_a: Impairment | None = None,
                 mtu: int = 1500, ifname: str = "imp0", txqueuelen: int = 4096) -> None:
        self.a_address = a_address
        self.b_address = b_address
        self._impair = (a_to_b, b_to_a)
        self.mtu = mtu
        self.ifname = ifname
        self.txqueuelen = txqueuelen
        self._fds: dict[str, int] = {}
        self.relay: Relay | None = None

    def __enter__(self) -> KernelPair:
        from .tun import TunLink
        from ustack.netns import entered, iproute, setup_tun

        links: dict[str, TunLink] = {}
        try:
            for side, me, peer in (("a", self.a_address, self.b_address),
                                   ("b", self.b_address, self.a_address)):
                self._fds[side] = fd = _detached_namespace()
                with entered(fd):
                    device = setup_tun(self.ifname, f"{me}/32", self.mtu,
                                       txqueuelen=self.txqueuelen)
                    try:
                        def route(ipr: Any, name: str = device.name, peer: str = peer) -> None:
                            (index,) = ipr.link_lookup(ifname=name)
                            ipr.route("add", dst=f"{peer}/32", oif=index)
                        iproute(route)
                    except BaseException:
                        device.close()
                        raise
                    links[side] = TunLink(device, kernel_address=f"{me}/32", mtu=self.mtu)
            self.relay = Relay(links["a"], links["b"], a_to_b=self._impair[0],
                               b_to_a=self._impair[1])
        except BaseException:
            for link in links.values():
                link.close()
            self._close_namespaces()
            raise
        return self

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start relaying (call on the loop that will run the kernel sockets' I/O)."""
        self.relay.start(loop)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        try:
            if self.relay is not None:
                self.relay.close()
        finally:
            self._close_namespaces()

    async def __aenter__(self) -> KernelPair:
        self.__enter__()
        try:
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def _close_namespaces(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def fd(self, side: str) -> int:
        """An fd for namespace ``"a"`` or ``"b"`` (valid while the pair is open)."""
        return self._fds[side]

    def entered(self, side: str) -> Any:
        """``with pair.entered("a"):`` runs the body's thread in namespace A."""
        from ustack.netns import entered
        return entered(self._fds[side])

    def socket(self, side: str, *args: Any) -> Any:
        """A non-blocking socket (default TCP/IPv4) made in namespace ``side``."""
        import socket as _socket
        with self.entered(side):
            s = _socket.socket(*args)
        s.setblocking(False)
        return s

    def address(self, side: str) -> str:
        return self.a_address if side == "a" else self.b_address

    def sysctl(self, side: str, name: str, value: Any) -> None:
        """Write a /proc/sys setting in namespace ``side``."""
        path = "/proc/sys/" + name.replace(".", "/")
        with self.entered(side):
            with open(path, "w") as f:
                f.write(str(value))
