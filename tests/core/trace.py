"""A packet-trace harness for the I/O-free core: put a segment in, assert exactly what comes out.

The host under test is 198.18.0.2; the scripted peer is 198.18.0.1.  Time is virtual
(milliseconds), so a 60 s TIME-WAIT passes instantly.
"""
from __future__ import annotations

from typing import Any

from ustack.host import Host
from ustack.tcp.connection import ConnectionUser
from ustack.wire import ACK, FIN, PSH, RST, SYN, build_tcp, describe, ip_to_int, parse

PEER = ip_to_int("198.18.0.1")
ME = ip_to_int("198.18.0.2")
M32 = 0xFFFFFFFF

__all__ = ["Trace", "Recorder", "ACK", "FIN", "PSH", "RST", "SYN", "PEER", "ME"]


class Recorder(ConnectionUser):
    """A connection user that remembers what the core told it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.error: BaseException | None = None
        self.closed = False

    def tcp_established(self, conn: Any) -> None:
        self.events.append("established")

    def tcp_data(self, conn: Any) -> None:
        self.data += conn.recv()
        self.events.append("eof" if conn.rcv_fin and not conn.rcv_queued else "data")

    def tcp_writable(self, conn: Any) -> None:
        self.events.append("writable")

    def tcp_closed(self, conn: Any, exc: BaseException | None) -> None:
        self.closed = True
        self.error = exc
        self.events.append(f"closed:{type(exc).__name__ if exc else None}")


class Trace:
    def __init__(self, **sysctl: Any) -> None:
        self.host = Host("198.18.0.2", sysctl={k.replace("__", "."): v
                                               for k, v in sysctl.items()} or None,
                         secret=b"trace", seed=7, now=1_000_000)
        self.mib = self.host.counters

    # ------------------------------------------------------------- time
    @property
    def now(self) -> int:
        return self.host.now

    def advance(self, ms: int) -> None:
        self.host.advance(self.host.now + ms)

    # ------------------------------------------------------------- packets
    def inject(self, flags: int, seq: int, ack: int = 0, win: int = 65535, payload: bytes = b"",
               sport: int = 40000, dport: int = 80, **opts: Any) -> None:
        pkt = build_tcp(PEER, ME, sport, dport, seq & M32, ack & M32, flags, win, payload,
                        **opts)
        self.host.receive(pkt)

    def output(self) -> list[Any]:
        return [parse(p, {k: 0 for k in self.host.mib}) for p in self.host.take_output()]

    def expect(self, **want: Any) -> Any:
        """Exactly one segment must have come out, with these fields."""
        out = self.output()
        assert len(out) == 1, f"expected one segment, got {[describe(s) for s in out]}"
        seg = out[0]
        self._check(seg, want)
        return seg

    def expect_many(self, *wants: dict[str, Any]) -> list[Any]:
        out = self.output()
        assert len(out) == len(wants), \
            f"expected {len(wants)} segments, got {[describe(s) for s in out]}"
        for seg, want in zip(out, wants):
            self._check(seg, want)
        return out

    @staticmethod
    def _check(seg: Any, want: dict[str, Any]) -> None:
        for k, v in want.items():
            got = len(seg.payload) if k == "length" else getattr(seg, k)
            assert got == v, f"{k}: expected {v!r}, got {got!r} in {describe(seg)}"

    def expect_nothing(self) -> None:
        out = self.output()
        assert not out, f"expected no segment, got {[describe(s) for s in out]}"

    # ------------------------------------------------------------- scripted openings
    def passive_open(self, port: int = 80, isn: int = 1000, ts: bool = True,
                     sport: int = 40000) -> tuple[Any, Recorder, Any]:
        """Listener on `port`; the peer connects.  Returns (connection, recorder, SYN-ACK)."""
        listener = self.host.listeners.get(port) or self.host.listen(port)
        opts: dict[str, Any] = dict(mss=1460, sack_ok=True, wscale=7)
        if ts:
            opts.update(ts_val=100, ts_ecr=0)
        self.inject(SYN, isn, 0, 65535, sport=sport, dport=port, **opts)
        synack = self.expect(flags=SYN | ACK, ack=isn + 1)
        self.inject(ACK, isn + 1, synack.seq + 1, 502, sport=sport, dport=port,
                    **({"ts_val": 101, "ts_ecr": synack.ts_val} if ts else {}))
        self.expect_nothing()
        conn = listener.accept()
        assert conn is not None and conn.state_name == "ESTAB"
        rec = Recorder()
        conn.user = rec
        return conn, rec, synack

    def active_open(self, port: int = 80, isn: int = 5000, ts: bool = True,
                    peer_win: int = 502) -> tuple[Any, Recorder, Any]:
        rec = Recorder()
        conn = self.host.connect("198.18.0.1", port, user=rec)
        syn = self.expect(flags=SYN)
        opts: dict[str, Any] = dict(mss=1460, sack_ok=True, wscale=7)
        if ts:
            opts.update(ts_val=200, ts_ecr=syn.ts_val)
        self.inject(SYN | ACK, isn, syn.seq + 1, 65535, sport=port, dport=conn.lport, **opts)
        self.expect(flags=ACK, seq=syn.seq + 1, ack=isn + 1)
        assert conn.state_name == "ESTAB" and rec.events == ["established"]
        return conn, rec, syn
