"""Congestion control modules behind one small interface, with Linux's names.

A module is chosen by name (`net.ipv4.tcp_congestion_control`, default ``cubic`` as in Linux,
or per socket with TCP_CONGESTION) and attached to one connection.  It sees the connection as
Linux's ``struct tcp_sock`` is seen by a ``tcp_congestion_ops``: it reads and writes ``cwnd``,
``ssthresh`` and ``cwnd_cnt`` (packets, as Linux counts them) and reads the rest.  The hooks are
Linux's (include/net/tcp.h):

* ``init(tp)`` -- when the connection is established
* ``ssthresh(tp) -> int`` -- the slow-start threshold after a loss (recovery or RTO)
* ``cong_avoid(tp, ack, acked)`` -- grow cwnd for `acked` newly delivered packets
* ``undo_cwnd(tp) -> int`` -- the cwnd to return to when a reduction proves spurious
* ``pkts_acked(tp, acked, rtt_ms)`` -- an RTT sample for delay-based logic (HyStart)
* ``set_state(tp, ca_state)`` and ``cwnd_event(tp, event)`` -- state changes and events

The shared arithmetic (tcp_slow_start, tcp_cong_avoid_ai, tcp_is_cwnd_limited) lives here, as
it does in net/ipv4/tcp_cong.c.
"""
from __future__ import annotations

from typing import Any

TCP_INFINITE_SSTHRESH = 0x7FFFFFFF

# tcp_ca_event
CA_EVENT_TX_START = 0        # first transmission after an idle period
CA_EVENT_CWND_RESTART = 1    # congestion window restart after idle
CA_EVENT_COMPLETE_CWR = 2    # end of a cwnd reduction
CA_EVENT_LOSS = 3            # RTO: loss state entered

# icsk_ca_state (tcp_ca_state in include/net/tcp.h)
CA_OPEN = 0
CA_DISORDER = 1
CA_CWR = 2
CA_RECOVERY = 3
CA_LOSS = 4
CA_NAMES = {CA_OPEN: "open", CA_DISORDER: "disorder", CA_CWR: "cwr",
            CA_RECOVERY: "recovery", CA_LOSS: "loss"}


def in_slow_start(tp: Any) -> bool:
    """tcp_in_slow_start."""
    return tp.cwnd < tp.ssthresh


def is_cwnd_limited(tp: Any) -> bool:
    """tcp_is_cwnd_limited: the window was the limit in the last round, or (in slow start)
    cwnd is below twice the most packets that were ever out in it."""
    if tp.is_cwnd_limited:
        return True
    if in_slow_start(tp):
        return tp.cwnd < 2 * tp.max_packets_out
    return False


def slow_start(tp: Any, acked: int) -> int:
    """tcp_slow_start: cwnd grows by what was ACKed, up to ssthresh; returns what is left
    over for congestion avoidance."""
    cwnd = min(tp.cwnd + acked, tp.ssthresh)
    acked -= cwnd - tp.cwnd
    tp.cwnd = min(cwnd, tp.cwnd_clamp)
    return acked


def cong_avoid_ai(tp: Any, w: int, acked: int) -> None:
    """tcp_cong_avoid_ai: one packet more per `w` packets ACKed (credits kept in cwnd_cnt)."""
    if tp.cwnd_cnt >= w:
        tp.cwnd_cnt = 0
        tp.cwnd += 1
    tp.cwnd_cnt += acked
    if tp.cwnd_cnt >= w:
        delta = tp.cwnd_cnt // w
        tp.cwnd_cnt -= delta * w
        tp.cwnd += delta
    tp.cwnd = min(tp.cwnd, tp.cwnd_clamp)


class CongestionOps:
    """The hooks a module may fill (Linux struct tcp_congestion_ops); defaults do nothing."""

    name = ""

    def init(self, tp: Any) -> None: ...

    def ssthresh(self, tp: Any) -> int:
        raise NotImplementedError

    def cong_avoid(self, tp: Any, ack: int, acked: int) -> None:
        raise NotImplementedError

    def undo_cwnd(self, tp: Any) -> int:
        """tcp_reno_undo_cwnd: back to the larger of now and the cwnd before the loss."""
        return max(tp.cwnd, tp.prior_cwnd)

    def pkts_acked(self, tp: Any, acked: int, rtt_ms: int) -> None: ...

    def set_state(self, tp: Any, ca_state: int) -> None: ...

    def cwnd_event(self, tp: Any, event: int) -> None: ...


def available() -> list[str]:
    """net.ipv4.tcp_available_congestion_control."""
    return sorted(_MODULES)


def create(name: str) -> CongestionOps:
    """A fresh module instance (its per-connection state lives in it) by Linux's name."""
    try:
        cls = _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r}: ustack has "
                         f"{', '.join(available())}") from None
    return cls()


from ustack.tcp.cong.cubic import Cubic  # noqa: E402  (the modules import the helpers above)
from ustack.tcp.cong.reno import Reno  # noqa: E402

_MODULES: dict[str, type[CongestionOps]] = {"reno": Reno, "cubic": Cubic}
