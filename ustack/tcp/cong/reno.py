"""Reno (net/ipv4/tcp_cong.c: tcp_reno_cong_avoid, tcp_reno_ssthresh, tcp_reno_undo_cwnd)."""
from __future__ import annotations

from typing import Any

from ustack.tcp import cong


class Reno(cong.CongestionOps):
    name = "reno"

    def ssthresh(self, tp: Any) -> int:
        """tcp_reno_ssthresh: half the window, at least 2."""
        return max(tp.cwnd >> 1, 2)

    def cong_avoid(self, tp: Any, ack: int, acked: int) -> None:
        """tcp_reno_cong_avoid: slow start below ssthresh, then one packet per window."""
        if not cong.is_cwnd_limited(tp):
            return
        if cong.in_slow_start(tp):
            acked = cong.slow_start(tp, acked)
            if not acked:
                return
        cong.cong_avoid_ai(tp, tp.cwnd, acked)
