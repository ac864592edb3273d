"""CUBIC (RFC 9438) as Linux's net/ipv4/tcp_cubic.c runs it, HyStart included.

The window follows W(t) = C (t - K)^3 + W_max after a loss, with Linux's fixed-point units:
time in 1/1024 s (BICTCP_HZ = 10), C = bic_scale / 1024 = 41 / 1024 ~ 0.04 per second cubed
in these units, beta = 717 / 1024 ~ 0.7, fast convergence and the Reno-friendly region on.
HyStart ends slow start early on an ACK train that spans half the minimum delay or on a delay
increase of an eighth of it (clamped to 4..16 ms), once cwnd reaches 16.

ustack's clock is in milliseconds (Linux's jiffies are 4 ms here, its HyStart clock is in
microseconds): times below are kept in microseconds computed from it.  One deliberate
difference: the cube root is exact (Linux uses a table and one Newton step, within 0.2 %).
"""
from __future__ import annotations

from typing import Any

from ustack.tcp import cong

BICTCP_BETA_SCALE = 1024
BICTCP_HZ = 10
BETA = 717
BIC_SCALE = 41
FAST_CONVERGENCE = True
TCP_FRIENDLINESS = True
HYSTART = True
HYSTART_ACK_TRAIN = 1
HYSTART_DELAY = 2
HYSTART_DETECT = HYSTART_ACK_TRAIN | HYSTART_DELAY
HYSTART_LOW_WINDOW = 16
HYSTART_ACK_DELTA_US = 2000
HYSTART_MIN_SAMPLES = 8
HYSTART_DELAY_MIN_US = 4000
HYSTART_DELAY_MAX_US = 16000
HYSTART_ACK_DELAY_US = 1000      # hystart_ack_delay: min(1 ms, 4 GSO bursts at the pacing rate)
HZ_MS = 1000

CUBE_RTT_SCALE = BIC_SCALE * 10
BETA_FRIENDLY = 8 * (BICTCP_BETA_SCALE + BETA) // 3 // (BICTCP_BETA_SCALE - BETA)
CUBE_FACTOR = (1 << (10 + 3 * BICTCP_HZ)) // CUBE_RTT_SCALE


def cube_root(a: int) -> int:
    """The integer cube root (floor)."""
    if a <= 0:
        return 0
    x = 1 << ((a.bit_length() + 2) // 3)
    while True:
        y = (2 * x + a // (x * x)) // 3
        if y >= x:
            break
        x = y
    while x * x * x > a:
        x -= 1
    while (x + 1) ** 3 <= a:
        x += 1
    return x


class Cubic(cong.CongestionOps):
    name = "cubic"
    __slots__ = ("cnt", "last_max_cwnd", "last_cwnd", "last_time", "origin_point", "k",
                 "delay_min", "epoch_start", "ack_cnt", "tcp_cwnd", "sample_cnt", "found",
                 "round_start", "end_seq", "last_ack", "curr_rtt")

    def __init__(self) -> None:
        self._reset()
        self.round_start = self.last_ack = 0
        self.end_seq = 0
        self.curr_rtt = 0xFFFFFFFF
        self.sample_cnt = 0

    def _reset(self) -> None:
        """bictcp_reset."""
        self.cnt = 0
        self.last_max_cwnd = 0
        self.last_cwnd = 0
        self.last_time = 0
        self.origin_point = 0
        self.k = 0
        self.delay_min = 0          # µs
        self.epoch_start = 0        # ms; 0 = no epoch
        self.ack_cnt = 0
        self.tcp_cwnd = 0
        self.found = False

    def _hystart_reset(self, tp: Any) -> None:
        """bictcp_hystart_reset: a new round starts at snd_nxt."""
        self.round_start = self.last_ack = tp.now_us()
        self.end_seq = tp.snd_nxt
        self.curr_rtt = 0xFFFFFFFF
        self.sample_cnt = 0

    def init(self, tp: Any) -> None:
        self._reset()
        if HYSTART:
            self._hystart_reset(tp)

    def cwnd_event(self, tp: Any, event: int) -> None:
        """cubictcp_cwnd_event: after an idle period the epoch moves by the idle time, so the
        curve does not jump (an idle sender is not probing)."""
        if event == cong.CA_EVENT_TX_START:
            now = tp.now_ms()
            delta = now - tp.lsndtime
            if self.epoch_start and delta > 0:
                self.epoch_start = min(self.epoch_start + delta, now)

    def _update(self, tp: Any, cwnd: int, acked: int) -> None:
        """bictcp_update: how many ACKed packets make cwnd grow by one (cnt)."""
        now = tp.now_ms()
        self.ack_cnt += acked
        if self.last_cwnd == cwnd and now - self.last_time <= HZ_MS // 32:
            return
        if not (self.epoch_start and now == self.last_time):
            self.last_cwnd = cwnd
            self.last_time = now
            if self.epoch_start == 0:
                self.epoch_start = now or 1
                self.ack_cnt = acked
                self.tcp_cwnd = cwnd
                if self.last_max_cwnd <= cwnd:
                    self.k = 0
                    self.origin_point = cwnd
                else:
                    self.k = cube_root(CUBE_FACTOR * (self.last_max_cwnd - cwnd))
                    self.origin_point = self.last_max_cwnd
            # t in 1/1024 s, counted from the epoch plus the minimum delay
            t = now - self.epoch_start + (self.delay_min + 999) // 1000
            t = (t << BICTCP_HZ) // HZ_MS
            offs = self.k - t if t < self.k else t - self.k
            delta = (CUBE_RTT_SCALE * offs * offs * offs) >> (10 + 3 * BICTCP_HZ)
            target = self.origin_point - delta if t < self.k else self.origin_point + delta
            if target > cwnd:
                self.cnt = cwnd // (target - cwnd)
            else:
                self.cnt = 100 * cwnd        # very small increment
            if self.last_max_cwnd == 0 and self.cnt > 20:
                self.cnt = 20                # 5 % per RTT while the path is unknown
        if TCP_FRIENDLINESS:
            delta = (cwnd * BETA_FRIENDLY) >> 3
            while delta and self.ack_cnt > delta:   # what Reno would have by now
                self.ack_cnt -= delta
                self.tcp_cwnd += 1
            if self.tcp_cwnd > cwnd:
                max_cnt = cwnd // (self.tcp_cwnd - cwnd)
                if self.cnt > max_cnt:
                    self.cnt = max_cnt
        self.cnt = max(self.cnt, 2)

    def cong_avoid(self, tp: Any, ack: int, acked: int) -> None:
        """cubictcp_cong_avoid."""
        if not cong.is_cwnd_limited(tp):
            return
        if cong.in_slow_start(tp):
            acked = cong.slow_start(tp, acked)
            if not acked:
                return
        self._update(tp, tp.cwnd, acked)
        cong.cong_avoid_ai(tp, self.cnt, acked)

    def ssthresh(self, tp: Any) -> int:
        """cubictcp_recalc_ssthresh: remember W_max (lower with fast convergence), back off
        to beta * cwnd."""
        self.epoch_start = 0
        if tp.cwnd < self.last_max_cwnd and FAST_CONVERGENCE:
            self.last_max_cwnd = (tp.cwnd * (BICTCP_BETA_SCALE + BETA)) // (2 * BICTCP_BETA_SCALE)
        else:
            self.last_max_cwnd = tp.cwnd
        return max((tp.cwnd * BETA) // BICTCP_BETA_SCALE, 2)

    def set_state(self, tp: Any, ca_state: int) -> None:
        """cubictcp_state: an RTO starts over."""
        if ca_state == cong.CA_LOSS:
            self._reset()
            self._hystart_reset(tp)

    def pkts_acked(self, tp: Any, acked: int, rtt_ms: int) -> None:
        """cubictcp_acked: keep the minimum delay, run HyStart in slow start."""
        if rtt_ms < 0:
            return
        if self.epoch_start and tp.now_ms() - self.epoch_start < HZ_MS:
            return        # delay samples right after a recovery are discarded
        delay = max(rtt_ms * 1000, 1)
        if self.delay_min == 0 or self.delay_min > delay:
            self.delay_min = delay
        if not self.found and cong.in_slow_start(tp) and HYSTART:
            self._hystart_update(tp, delay)

    def _hystart_update(self, tp: Any, delay: int) -> None:
        if ((self.end_seq - tp.snd_una) & 0xFFFFFFFF) > 0x7FFFFFFF:   # snd_una after end_seq
            self._hystart_reset(tp)
        if tp.cwnd < HYSTART_LOW_WINDOW:
            return
        mib = tp.host.mib
        if HYSTART_DETECT & HYSTART_ACK_TRAIN:
            now = tp.now_us()
            if now - self.last_ack <= HYSTART_ACK_DELTA_US:
                self.last_ack = now
                threshold = (self.delay_min + HYSTART_ACK_DELAY_US) >> 1   # no pacing
                if now - self.round_start > threshold:
                    self.found = True
                    mib["TcpExtTCPHystartTrainDetect"] += 1
                    mib["TcpExtTCPHystartTrainCwnd"] += tp.cwnd
                    tp.ssthresh = tp.cwnd
        if HYSTART_DETECT & HYSTART_DELAY:
            if self.curr_rtt > delay:
                self.curr_rtt = delay
            if self.sample_cnt < HYSTART_MIN_SAMPLES:
                self.sample_cnt += 1
            else:
                thresh = min(max(self.delay_min >> 3, HYSTART_DELAY_MIN_US), HYSTART_DELAY_MAX_US)
                if self.curr_rtt > self.delay_min + thresh:
                    self.found = True
                    mib["TcpExtTCPHystartDelayDetect"] += 1
                    mib["TcpExtTCPHystartDelayCwnd"] += tp.cwnd
                    tp.ssthresh = tp.cwnd
