"""The sender's scoreboard and loss recovery, as Linux 6.18 runs them (tcp_input.c,
tcp_recovery.c, tcp_output.c's retransmission queue).

Every segment sent and not yet cumulatively acknowledged is an `Skb` in `Recovery.rtx`, in
sequence order, with Linux's marks: SACKED_ACKED (the peer SACKed it), LOST (we believe it is
gone), SACKED_RETRANS (a retransmission of it is in flight) and EVER_RETRANS.  From the marks come
the counters Linux keeps (sacked_out, lost_out, retrans_out) and the packets in flight:

    in_flight = packets_out - (sacked_out + lost_out) + retrans_out        (RFC 6675's pipe)

An ACK goes through `Connection._process_ack` (tcp_ack), which calls, in Linux's order:
`sacktag` (tcp_sacktag_write_queue: SACK and D-SACK blocks, reordering), `clean_rtx_queue`
(cumulative ACK, RTT samples, RACK's clock), `fastretrans_alert` (the Open / Disorder / CWR /
Recovery / Loss state machine with RACK loss marking and the undo rules), then the congestion
module or PRR (`cwnd_reduction`, RFC 6937) and `xmit_retransmit_queue` for the lost segments.
Loss detection is RACK (RFC 8985, tcp_rack_detect_loss) for SACK peers and NewReno's
(tcp_newreno_mark_lost, three duplicate ACKs counted as "reno SACKs") for peers without SACK.

Times are the host's milliseconds (Linux keeps these in microseconds and rounds its timers to
jiffies; on this kernel a jiffy is 4 ms).
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Iterable

from ustack.tcp.common import M32, _after, _before
from ustack.tcp.cong import (CA_CWR, CA_DISORDER, CA_EVENT_COMPLETE_CWR, CA_EVENT_LOSS, CA_LOSS,
                             CA_OPEN, CA_RECOVERY, TCP_INFINITE_SSTHRESH)

if TYPE_CHECKING:  # pragma: no cover
    from ustack.tcp.connection import Connection

# TCP_SKB_CB(skb)->sacked
SACKED_ACKED = 0x01
SACKED_RETRANS = 0x02
LOST = 0x04
EVER_RETRANS = 0x80
RETRANS = SACKED_RETRANS | EVER_RETRANS

# tcp_ack's flags (tcp_input.c)
FLAG_DATA = 0x01
FLAG_WIN_UPDATE = 0x02
FLAG_DATA_ACKED = 0x04
FLAG_RETRANS_DATA_ACKED = 0x08
FLAG_SYN_ACKED = 0x10
FLAG_DATA_SACKED = 0x20
FLAG_ECE = 0x40
FLAG_LOST_RETRANS = 0x80
FLAG_ORIG_SACK_ACKED = 0x200
FLAG_SND_UNA_ADVANCED = 0x400
FLAG_DSACKING_ACK = 0x800
FLAG_SET_XMIT_TIMER = 0x1000
FLAG_DSACK_TLP = 0x20000
FLAG_ACKED = FLAG_DATA_ACKED | FLAG_SYN_ACKED
FLAG_NOT_DUP = FLAG_DATA | FLAG_WIN_UPDATE | FLAG_ACKED
FLAG_CA_ALERT = FLAG_DATA_SACKED | FLAG_ECE | FLAG_DSACKING_ACK
FLAG_FORWARD_PROGRESS = FLAG_ACKED | FLAG_DATA_SACKED

# what tcp_fastretrans_alert asks tcp_xmit_recovery to do
REXMIT_NONE = 0
REXMIT_LOST = 1
REXMIT_NEW = 2

TCP_RACK_RECOVERY_THRESH = 16
TCP_RACK_NO_DUPTHRESH = 0x4
TCP_TIMEOUT_MIN = 8          # ms: 2 jiffies at HZ=250 (the RACK reordering timer's slack)


class Skb:
    """One sent segment (Linux: an skb in the retransmission queue, one MSS here)."""

    __slots__ = ("seq", "end_seq", "fin", "sacked", "time", "order", "delivered", "burst",
                 "psh")

    def __init__(self, seq: int, end_seq: int, fin: bool, time: int, delivered: int,
                 burst: int = 0) -> None:
        self.burst = burst            # segments handed to the device together (one GSO skb)
        self.psh = False              # its own PSH mark (tcp_mark_push), kept for retransmits
        self.seq = seq
        self.end_seq = end_seq
        self.fin = fin
        self.sacked = 0
        self.time = time              # when it was last (re)transmitted (ms)
        self.order = 0                # and in which place among all transmissions: Linux
        #                               orders them by microsecond stamps, ustack counts
        self.delivered = delivered    # packets delivered when it was sent (rate sample)

    @property
    def length(self) -> int:
        """Payload bytes (the FIN takes a sequence number, not a byte)."""
        return ((self.end_seq - self.seq) & M32) - self.fin

    def __repr__(self) -> str:
        marks = "".join(c for bit, c in ((SACKED_ACKED, "S"), (LOST, "L"),
                                         (SACKED_RETRANS, "R"), (EVER_RETRANS, "e"))
                        if self.sacked & bit)
        return f"<Skb {self.seq}:{self.end_seq}{' F' if self.fin else ''} {marks} @{self.time}>"


class Recovery:
    """The scoreboard of one connection and Linux's loss-recovery state machine."""

    __slots__ = (
        "c", "rtx", "sacked_out", "lost_out", "retrans_out", "ca_state", "high_seq",
        "undo_marker", "undo_retrans", "prior_ssthresh", "prr_delivered", "prr_out",
        "reordering", "reord_seen", "highest_sack", "delivered", "dsack_dups", "frto",
        "rack_mstamp", "rack_order", "rack_rtt", "rack_advanced", "rack_reo_wnd_steps",
        "rack_reo_wnd_persist", "rack_dsack_seen", "rack_last_delivered", "min_rtt",
        "min_rtt_stamp", "is_sack_reneg", "bursts", "lost", "tx_count",
    )

    def __init__(self, conn: "Connection") -> None:
        self.c = conn
        self.rtx: deque[Skb] = deque()
        self.sacked_out = 0
        self.lost_out = 0
        self.retrans_out = 0
        self.ca_state = CA_OPEN
        self.high_seq = 0
        self.undo_marker = 0        # 0: no undo possible (Linux's convention)
        self.undo_retrans = 0
        self.prior_ssthresh = 0
        self.prr_delivered = 0
        self.prr_out = 0
        self.reordering = conn.host.sysctl["net.ipv4.tcp_reordering"]
        self.reord_seen = 0
        self.highest_sack: Skb | None = None
        self.delivered = 0
        self.dsack_dups = 0
        self.frto = False
        self.rack_mstamp = 0
        self.rack_order = 0
        self.rack_rtt = 0
        self.rack_advanced = False
        self.rack_reo_wnd_steps = 1
        self.rack_reo_wnd_persist = 0
        self.rack_dsack_seen = False
        self.rack_last_delivered = 0
        self.min_rtt = -1
        self.min_rtt_stamp = 0
        self.is_sack_reneg = False
        self.bursts = 0
        self.lost = 0               # segments ever marked lost (tp->lost)
        self.tx_count = 0           # transmissions so far: their order (Skb.order)

    # ------------------------------------------------------------------ counts
    @property
    def packets_out(self) -> int:
        return len(self.rtx)

    def in_flight(self) -> int:
        """tcp_packets_in_flight."""
        return len(self.rtx) - (self.sacked_out + self.lost_out) + self.retrans_out

    def left_out(self) -> int:
        return self.sacked_out + self.lost_out

    def is_reno(self) -> bool:
        return not self.c.sack_ok

    def in_cwnd_reduction(self) -> bool:
        return self.ca_state in (CA_CWR, CA_RECOVERY)

    def any_retrans_done(self) -> bool:
        """tcp_any_retrans_done."""
        if self.retrans_out:
            return True
        return bool(self.rtx and self.rtx[0].sacked & EVER_RETRANS)

    def highest_sack_seq(self) -> int:
        """tcp_highest_sack_seq: the end of the highest SACKed segment, else snd_una."""
        if not self.sacked_out or self.highest_sack is None:
            return self.c.snd_una
        return self.highest_sack.end_seq

    def set_ca_state(self, state: int) -> None:
        """tcp_set_ca_state: the module hears of it first."""
        self.c.ca.set_state(self.c, state)
        self.ca_state = state

    # ------------------------------------------------------------------ sending
    def new_burst(self) -> int:
        """A new GSO burst: the segments sent from here on until the next call are one skb."""
        self.bursts += 1
        return self.bursts

    def on_sent(self, seq: int, end_seq: int, fin: bool, now: int) -> Skb:
        skb = Skb(seq, end_seq, fin, now, self.delivered, self.bursts)
        self.tx_count += 1
        skb.order = self.tx_count
        self.rtx.append(skb)
        return skb

    def clear(self) -> None:
        self.rtx.clear()
        self.sacked_out = self.lost_out = self.retrans_out = 0
        self.highest_sack = None

    # ------------------------------------------------------------------ RTT
    def update_min_rtt(self, rtt: int, now: int) -> None:
        """tcp_update_rtt_min: a windowed minimum over tcp_min_rtt_wlen seconds."""
        wlen = self.c.host.sysctl["net.ipv4.tcp_min_rtt_wlen"] * 1000
        if self.min_rtt < 0 or rtt <= self.min_rtt or now - self.min_rtt_stamp > wlen:
            self.min_rtt = rtt
            self.min_rtt_stamp = now

    # ------------------------------------------------------------------ SACK
    def sacktag(self, blocks: Iterable[tuple[int, int]], ack: int, prior_snd_una: int,
                state: dict[str, Any]) -> int:
        """tcp_sacktag_write_queue: check each block, D-SACK first (tcp_check_dsack), then mark
        the segments the blocks cover.  Returns the ACK flags it adds."""
        c = self.c
        mib = c.host.mib
        blocks = list(blocks)
        flag = 0
        state.setdefault("reord", c.snd_nxt)
        found_dup = self._check_dsack(blocks, ack, prior_snd_una, state)
        if found_dup:
            flag |= FLAG_DSACKING_ACK | state.get("dsack_flags", 0)
        valid: list[tuple[int, int, bool]] = []
        for i, (start, end) in enumerate(blocks):
            dup = i == 0 and found_dup
            if not self._sackblock_valid(dup, start, end):
                if dup:
                    mib["TcpExtTCPDSACKIgnoredNoUndo" if not self.undo_marker
                        else "TcpExtTCPDSACKIgnoredOld"] += 1
                else:
                    # not counted when it is old because the ACKs were reordered
                    if ack != c.snd_una and not _after(end, c.snd_una):
                        continue
                    mib["TcpExtTCPSACKDiscard"] += 1
                continue
            if not _after(end, prior_snd_una):
                continue        # very old: nothing left to mark
            valid.append((start, end, dup))
        if not self.rtx:
            return flag
        for start, end, dup in valid:
            for skb in self.rtx:
                if not _after(skb.end_seq, start):
                    continue
                if not _before(skb.seq, end):
                    break
                if _before(skb.seq, start) or _after(skb.end_seq, end):
                    continue    # partly covered: Linux would split it; ustack waits
                flag |= self._sacktag_one(skb, dup, state)
        if self.ca_state != CA_LOSS or self.undo_marker:
            self.check_sack_reordering(state["reord"], False)
        return flag

    def _check_dsack(self, blocks: list[tuple[int, int]], ack: int, prior_snd_una: int,
                     state: dict[str, Any]) -> bool:
        """tcp_check_dsack: the first block is a D-SACK if it lies below the ACK, or inside
        the second block."""
        if not blocks:
            return False
        mib = self.c.host.mib
        start0, end0 = blocks[0]
        if _before(start0, ack):
            mib["TcpExtTCPDSACKRecv"] += 1
        elif len(blocks) > 1:
            start1, end1 = blocks[1]
            if _after(end0, end1) or _before(start0, start1):
                return False
            mib["TcpExtTCPDSACKOfoRecv"] += 1
        else:
            return False
        dup_segs = self._dsack_seen(start0, end0, state)
        if not dup_segs:
            mib["TcpExtTCPDSACKIgnoredDubious"] += 1
            return False
        mib["TcpExtTCPDSACKRecvSegs"] += dup_segs
        # D-SACK for data already forgotten: count it against the retransmissions
        if self.undo_marker and self.undo_retrans > 0 and not _after(end0, prior_snd_una) \
                and _after(end0, self.undo_marker):
            self.undo_retrans = max(0, self.undo_retrans - dup_segs)
        return True

    def _dsack_seen(self, start: int, end: int, state: dict[str, Any]) -> int:
        """tcp_dsack_seen: how many duplicate segments the D-SACK reports (0: dubious)."""
        c = self.c
        if not _before(start, end):
            return 0
        seq_len = (end - start) & M32
        if seq_len > c.max_window:
            return 0
        mss = c._effective_mss()
        dup_segs = 1
        if seq_len > mss:
            dup_segs = (seq_len + mss - 1) // mss
        elif c.tlp_high_seq >= 0 and c.tlp_high_seq == end:
            state["dsack_flags"] = state.get("dsack_flags", 0) | FLAG_DSACK_TLP
        self.dsack_dups += dup_segs
        if self.dsack_dups > c.total_retrans:
            return 0        # more duplicates than we ever retransmitted
        if self.reord_seen and not state.get("dsack_flags", 0) & FLAG_DSACK_TLP:
            self.rack_dsack_seen = True
        state["sack_delivered"] = state.get("sack_delivered", 0) + dup_segs
        return dup_segs

    def _sackblock_valid(self, is_dsack: bool, start: int, end: int) -> bool:
        """tcp_is_sackblock_valid."""
        c = self.c
        if _after(end, c.snd_nxt) or not _before(start, end):
            return False
        if not _before(start, c.snd_nxt):
            return False
        if _after(start, c.snd_una):
            return True
        if not is_dsack or not self.undo_marker:
            return False
        if _after(end, c.snd_una):
            return False
        if not _before(start, self.undo_marker):
            return True
        if not _after(end, self.undo_marker):
            return False
        return not _before(start, (end - c.max_window) & M32)

    def _sacktag_one(self, skb: Skb, dup: bool, state: dict[str, Any]) -> int:
        """tcp_sacktag_one: one segment covered by a SACK block."""
        flag = 0
        sacked = skb.sacked
        if dup and sacked & RETRANS:
            if self.undo_marker and self.undo_retrans > 0 and \
                    _after(skb.end_seq, self.undo_marker):
                self.undo_retrans = max(0, self.undo_retrans - 1)
            if sacked & SACKED_ACKED and _before(skb.seq, state["reord"]):
                state["reord"] = skb.seq
        if not _after(skb.end_seq, self.c.snd_una):
            return 0
        if not sacked & SACKED_ACKED:
            self.rack_advance(sacked, skb)
            if sacked & SACKED_RETRANS:
                # a lost segment's retransmission was SACKed (one not marked lost keeps its
                # mark: that retransmission is believed still in flight)
                if sacked & LOST:
                    sacked &= ~(LOST | SACKED_RETRANS)
                    self.lost_out -= 1
                    self.retrans_out -= 1
            else:
                if not sacked & RETRANS:
                    # a never-retransmitted segment SACKed below the highest SACK: reordering
                    if _before(skb.seq, self.highest_sack_seq()) and \
                            _before(skb.seq, state["reord"]):
                        state["reord"] = skb.seq
                    if not _after(skb.end_seq, self.high_seq):
                        flag |= FLAG_ORIG_SACK_ACKED
                    if not state.get("first_sackt"):
                        state["first_sackt"] = skb.time
                    state["last_sackt"] = skb.time
                if sacked & LOST:
                    sacked &= ~LOST
                    self.lost_out -= 1
            state["prior_delivered"] = max(state.get("prior_delivered", 0), skb.delivered)
            sacked |= SACKED_ACKED
            flag |= FLAG_DATA_SACKED
            self.sacked_out += 1
            state["sack_delivered"] = state.get("sack_delivered", 0) + 1
            if self.highest_sack is None or _after(skb.end_seq, self.highest_sack.end_seq) \
                    or self.sacked_out == 1:
                self.highest_sack = skb
        if dup and sacked & SACKED_RETRANS:
            sacked &= ~SACKED_RETRANS
            self.retrans_out -= 1
        skb.sacked = sacked
        return flag

    def check_sack_reordering(self, low_seq: int, ts: bool) -> None:
        """tcp_check_sack_reordering: data below the highest SACK arrived late; widen the
        reordering degree to what was seen."""
        c = self.c
        fack = self.highest_sack_seq()
        if not _before(low_seq, fack):
            return
        metric = (fack - low_seq) & M32
        mss = c._effective_mss()
        if mss and metric > self.reordering * mss:
            self.reordering = min((metric + mss - 1) // mss,
                                  c.host.sysctl["net.ipv4.tcp_max_reordering"])
        self.reord_seen += 1
        c.host.mib["TcpExtTCPTSReorder" if ts else "TcpExtTCPSACKReorder"] += 1

    # ------------------------------------------------------------------ cumulative ACK
    def clean_rtx_queue(self, ack: int, prior_snd_una: int, prior_fack: int,
                        state: dict[str, Any]) -> tuple[int, int]:
        """tcp_clean_rtx_queue: drop what `ack` covers.  Returns (flags, packets acked) and
        leaves the RTT candidates in `state` (first_ackt/last_ackt)."""
        c = self.c
        flag = 0
        pkts_acked = 0
        reord = c.snd_nxt
        rtx = self.rtx
        delivered = 0
        while rtx:
            skb = rtx[0]
            if _after(skb.end_seq, ack):
                if _after(ack, skb.seq):
                    # partly acknowledged (the peer ACKed inside a segment): trim it
                    skb.seq = ack
                    flag |= FLAG_DATA_ACKED
                break
            sacked = skb.sacked
            rtx.popleft()
            pkts_acked += 1
            if not sacked & SACKED_ACKED:
                state["prior_delivered"] = max(state.get("prior_delivered", 0), skb.delivered)
            if sacked & RETRANS:
                if sacked & SACKED_RETRANS:
                    self.retrans_out -= 1
                flag |= FLAG_RETRANS_DATA_ACKED
            elif not sacked & SACKED_ACKED:
                if not state.get("first_ackt"):
                    state["first_ackt"] = skb.time
                state["last_ackt"] = skb.time
                if _before(skb.seq, reord):
                    reord = skb.seq
                if not _after(skb.end_seq, self.high_seq):
                    flag |= FLAG_ORIG_SACK_ACKED
            if sacked & SACKED_ACKED:
                self.sacked_out -= 1
            elif not self.is_reno():
                delivered += 1
                if not self._spurious_retrans(skb):
                    self.rack_advance(sacked, skb)
            if sacked & LOST:
                self.lost_out -= 1
            flag |= FLAG_DATA_ACKED
            if skb is self.highest_sack:
                self.highest_sack = None
        self.delivered += delivered
        if self.highest_sack is None and self.sacked_out:
            for skb in rtx:
                if skb.sacked & SACKED_ACKED:
                    self.highest_sack = skb
        if not self.sacked_out:
            self.highest_sack = None
        if flag & FLAG_ACKED:
            flag |= FLAG_SET_XMIT_TIMER
            if self.is_reno():
                self._remove_reno_sacks(pkts_acked)
                if flag & FLAG_RETRANS_DATA_ACKED:
                    flag &= ~FLAG_ORIG_SACK_ACKED
            elif _before(reord, prior_fack):
                self.check_sack_reordering(reord, False)
        return flag, pkts_acked

    def _spurious_retrans(self, skb: Skb) -> bool:
        """tcp_skb_spurious_retrans: a retransmitted segment ACKed with a TSecr from before
        the retransmission: the original arrived."""
        c = self.c
        return bool(skb.sacked & SACKED_RETRANS) and c.rcv_tsecr_ms is not None and \
            c.rcv_tsecr_ms < skb.time

    # ------------------------------------------------------------------ Reno "SACKs"
    def _check_reno_reordering(self, addend: int) -> None:
        if not self._limit_reno_sacked():
            return
        c = self.c
        self.reordering = min(len(self.rtx) + addend,
                              c.host.sysctl["net.ipv4.tcp_max_reordering"])
        self.reord_seen += 1
        c.host.mib["TcpExtTCPRenoReorder"] += 1

    def _limit_reno_sacked(self) -> bool:
        holes = min(max(self.lost_out, 1), len(self.rtx))
        if self.sacked_out + holes > len(self.rtx):
            self.sacked_out = len(self.rtx) - holes
            return True
        return False

    def add_reno_sack(self, num_dupack: int) -> None:
        """tcp_add_reno_sack: each duplicate ACK stands for one segment that left the net."""
        if num_dupack:
            prior = self.sacked_out
            self.sacked_out += num_dupack
            self._check_reno_reordering(0)
            if self.sacked_out > prior:
                self.delivered += self.sacked_out - prior

    def _remove_reno_sacks(self, acked: int) -> None:
        """tcp_remove_reno_sacks: one ACKed packet filled the hole, the rest eat dup ACKs."""
        if acked > 0:
            self.delivered += max(acked - self.sacked_out, 1)
            if acked - 1 >= self.sacked_out:
                self.sacked_out = 0
            else:
                self.sacked_out -= acked - 1
        self._check_reno_reordering(acked)

    # ------------------------------------------------------------------ RACK
    def rack_advance(self, sacked: int, skb: Skb) -> None:
        """tcp_rack_advance: the most recently sent segment known delivered."""
        now = self.c.host.now
        rtt = now - skb.time
        if sacked & RETRANS and self.min_rtt >= 0 and rtt < self.min_rtt:
            return      # ambiguous: the original or the retransmission?
        self.rack_advanced = True
        self.rack_rtt = rtt
        if skb.order > self.rack_order:              # tcp_skb_sent_after
            self.rack_order = skb.order
            self.rack_mstamp = skb.time

    def rack_reo_wnd(self) -> int:
        """tcp_rack_reo_wnd: no settling time before reordering has been seen (in recovery,
        or once dupthresh segments are SACKed), else min_rtt/4 per step, at most srtt."""
        c = self.c
        if not self.reord_seen:
            if self.ca_state >= CA_RECOVERY:
                return 0
            if self.sacked_out >= self.reordering and \
                    not c.host.sysctl["net.ipv4.tcp_recovery"] & TCP_RACK_NO_DUPTHRESH:
                return 0
        min_rtt = max(self.min_rtt, 0)
        return min((min_rtt >> 2) * self.rack_reo_wnd_steps, c.srtt)

    def rack_detect_loss(self) -> int:
        """tcp_rack_detect_loss: a segment sent before the most recently delivered one is lost
        once RACK.rtt + reo_wnd has passed since it was sent.  Returns the longest wait left
        (0: none)."""
        reo_wnd = self.rack_reo_wnd()
        now = self.c.host.now
        timeout = 0
        for skb in sorted(self.rtx, key=lambda s: s.order):
            sacked = skb.sacked
            if sacked & SACKED_ACKED:
                continue
            if sacked & LOST and not sacked & SACKED_RETRANS:
                continue        # marked lost, not yet retransmitted
            if skb.order >= self.rack_order:
                break           # not sent before the most recently delivered segment
            remaining = self.rack_rtt + reo_wnd - (now - skb.time)
            if remaining <= 0:
                self.mark_lost(skb)
            else:
                timeout = max(timeout, remaining)
        return timeout

    def rack_mark_lost(self) -> bool:
        """tcp_rack_mark_lost: run detection if RACK advanced; arm the reordering timer."""
        if not self.rack_advanced:
            return False
        self.rack_advanced = False
        timeout = self.rack_detect_loss()
        if timeout:
            self.c.arm_reo_timer(timeout + TCP_TIMEOUT_MIN)
        return bool(timeout)

    def rack_update_reo_wnd(self, prior_delivered: int) -> None:
        """tcp_rack_update_reo_wnd: a D-SACK (after reordering was seen) widens the window by
        one step, at most once per round trip; the steps fall back to one after 16 recoveries
        without D-SACKs.  `prior_delivered`: the delivered count when the newest segment this
        ACK covers was sent (the rate sample's)."""
        if self.c.host.sysctl["net.ipv4.tcp_recovery"] & 0x2 or not prior_delivered:
            return      # TCP_RACK_STATIC_REO_WND
        if prior_delivered < self.rack_last_delivered:
            self.rack_dsack_seen = False     # not a round trip since the last step
        if self.rack_dsack_seen:
            self.rack_reo_wnd_steps = min(0xFF, self.rack_reo_wnd_steps + 1)
            self.rack_dsack_seen = False
            self.rack_last_delivered = self.delivered
            self.rack_reo_wnd_persist = TCP_RACK_RECOVERY_THRESH
        elif not self.rack_reo_wnd_persist:
            self.rack_reo_wnd_steps = 1

    def reo_timeout(self) -> None:
        """tcp_rack_reo_timeout: the reordering window ran out."""
        c = self.c
        prior_inflight = self.in_flight()
        lost_before = self.lost
        self.rack_detect_loss()
        if prior_inflight != self.in_flight():
            if self.ca_state != CA_RECOVERY:
                self.enter_recovery(False)
                self.cwnd_reduction(1, self.lost - lost_before, 0)
            self.xmit_retransmit_queue()
        if not c.rto_pending():
            c._rearm_rto()

    # ------------------------------------------------------------------ marking
    def mark_lost(self, skb: Skb) -> None:
        """tcp_mark_skb_lost."""
        sacked = skb.sacked
        if sacked & SACKED_ACKED:
            return
        if sacked & LOST:
            if sacked & SACKED_RETRANS:
                # the retransmission is lost too
                skb.sacked &= ~SACKED_RETRANS
                self.retrans_out -= 1
                self.c.host.mib["TcpExtTCPLostRetransmit"] += 1
        else:
            self.lost_out += 1
            self.lost += 1
            skb.sacked |= LOST

    def newreno_mark_lost(self, snd_una_advanced: bool) -> None:
        """tcp_newreno_mark_lost: without SACK, the head is lost after dupthresh duplicate
        ACKs, and again after each partial ACK in recovery."""
        if (self.ca_state < CA_RECOVERY and self.sacked_out >= self.reordering) or \
                (self.ca_state == CA_RECOVERY and snd_una_advanced):
            if not self.rtx:
                return
            head = self.rtx[0]
            if head.sacked & LOST:
                return
            self.mark_lost(head)

    def identify_packet_loss(self, flag: int) -> int:
        """tcp_identify_packet_loss."""
        if not self.rtx:
            return flag
        if self.is_reno():
            self.newreno_mark_lost(bool(flag & FLAG_SND_UNA_ADVANCED))
        elif self.c.host.sysctl["net.ipv4.tcp_recovery"] & 0x1:
            prior_retrans = self.retrans_out
            if self.rack_mark_lost():
                flag &= ~FLAG_SET_XMIT_TIMER
            if prior_retrans > self.retrans_out:
                flag |= FLAG_LOST_RETRANS
        return flag

    def time_to_recover(self) -> bool:
        """tcp_time_to_recover: a loss is proven (RACK or NewReno marked one)."""
        return self.lost_out > 0

    def force_fast_retransmit(self) -> bool:
        """tcp_force_fast_retransmit."""
        c = self.c
        return _after(self.highest_sack_seq(),
                      (c.snd_una + self.reordering * c._effective_mss()) & M32)

    # ------------------------------------------------------------------ undo
    def init_undo(self) -> None:
        """tcp_init_undo."""
        c = self.c
        self.undo_marker = c.snd_una or 1
        self.undo_retrans = self.retrans_out
        if c.tlp_high_seq >= 0 and c.tlp_retrans:
            self.undo_retrans += 1
        if not self.undo_retrans:
            self.undo_retrans = -1

    def _packet_delayed(self) -> bool:
        """tcp_packet_delayed: the ACK echoes a timestamp from before our first
        retransmission: the original got through."""
        c = self.c
        return bool(c.retrans_stamp) and c.rcv_tsecr_ms is not None and \
            c.rcv_tsecr_ms < c.retrans_stamp

    def may_undo(self) -> bool:
        """tcp_may_undo."""
        return bool(self.undo_marker) and (not self.undo_retrans or self._packet_delayed())

    def undo_cwnd_reduction(self, unmark_loss: bool) -> None:
        """tcp_undo_cwnd_reduction."""
        c = self.c
        if unmark_loss:
            for skb in self.rtx:
                skb.sacked &= ~LOST
            self.lost_out = 0
        if self.prior_ssthresh:
            c.cwnd = c.ca.undo_cwnd(c)
            if self.prior_ssthresh > c.ssthresh:
                c.ssthresh = self.prior_ssthresh
        c.cwnd_stamp = c.host.now
        self.undo_marker = 0
        self.rack_advanced = True

    def _non_sack_preventing_reopen(self) -> bool:
        """tcp_is_non_sack_preventing_reopen: without SACK, hold the state until something
        above high_seq is ACKed."""
        c = self.c
        if c.snd_una == self.high_seq and self.is_reno():
            if not self.any_retrans_done():
                c.retrans_stamp = 0
            return True
        return False

    def try_undo_recovery(self) -> bool:
        """tcp_try_undo_recovery: at the end of recovery, undo if nothing was really lost."""
        c = self.c
        if self.may_undo():
            self.undo_cwnd_reduction(False)
            c.host.mib["TcpExtTCPLossUndo" if self.ca_state == CA_LOSS
                       else "TcpExtTCPFullUndo"] += 1
        elif self.rack_reo_wnd_persist:
            self.rack_reo_wnd_persist -= 1
        if self._non_sack_preventing_reopen():
            return True
        self.set_ca_state(CA_OPEN)
        self.is_sack_reneg = False
        return False

    def try_undo_dsack(self) -> bool:
        """tcp_try_undo_dsack: every retransmission was D-SACKed: they were all spurious."""
        if self.undo_marker and not self.undo_retrans:
            self.rack_reo_wnd_persist = min(TCP_RACK_RECOVERY_THRESH,
                                            self.rack_reo_wnd_persist + 1)
            self.undo_cwnd_reduction(False)
            self.c.host.mib["TcpExtTCPDSACKUndo"] += 1
            return True
        return False

    def try_undo_loss(self, frto_undo: bool) -> bool:
        """tcp_try_undo_loss: the RTO was spurious."""
        c = self.c
        if frto_undo or self.may_undo():
            self.undo_cwnd_reduction(True)
            c.host.mib["TcpExtTCPLossUndo"] += 1
            if frto_undo:
                c.host.mib["TcpExtTCPSpuriousRTOs"] += 1
            c.retransmits = 0
            if self._non_sack_preventing_reopen():
                return True
            if frto_undo or not self.is_reno():
                self.set_ca_state(CA_OPEN)
                self.frto = False
            return True
        return False

    def try_undo_partial(self, prior_snd_una: int) -> tuple[bool, bool]:
        """tcp_try_undo_partial: a partial ACK in recovery.  Returns (stop, do_lost)."""
        c = self.c
        if self.undo_marker and self._packet_delayed():
            # the hole was filled by the delayed original, not the retransmission
            self.check_sack_reordering(prior_snd_una, True)
            if self.retrans_out:
                return True, False
            if not self.any_retrans_done():
                c.retrans_stamp = 0
            self.undo_cwnd_reduction(True)
            c.host.mib["TcpExtTCPPartialUndo"] += 1
            self.try_keep_open()
            return False, False
        return False, self.force_fast_retransmit()

    def try_keep_open(self) -> None:
        """tcp_try_keep_open: Open, or Disorder while SACKs or retransmissions are out."""
        state = CA_OPEN
        if self.left_out() or self.any_retrans_done():
            state = CA_DISORDER
        if self.ca_state != state:
            self.set_ca_state(state)
            self.high_seq = self.c.snd_nxt

    def try_to_open(self, flag: int) -> None:
        """tcp_try_to_open."""
        if not self.any_retrans_done():
            self.c.retrans_stamp = 0
        if self.ca_state != CA_CWR:
            self.try_keep_open()

    # ------------------------------------------------------------------ cwnd reduction
    def init_cwnd_reduction(self) -> None:
        """tcp_init_cwnd_reduction: PRR starts; ssthresh from the congestion module."""
        c = self.c
        self.high_seq = c.snd_nxt
        c.tlp_high_seq = -1
        c.cwnd_cnt = 0
        c.prior_cwnd = c.cwnd
        self.prr_delivered = 0
        self.prr_out = 0
        c.ssthresh = c.ca.ssthresh(c)

    def cwnd_reduction(self, newly_acked_sacked: int, newly_lost: int, flag: int) -> None:
        """tcp_cwnd_reduction: Proportional Rate Reduction (RFC 6937)."""
        c = self.c
        if newly_acked_sacked <= 0 or not c.prior_cwnd:
            return
        in_flight = self.in_flight()
        delta = c.ssthresh - in_flight
        self.prr_delivered += newly_acked_sacked
        if delta < 0:
            sndcnt = (c.ssthresh * self.prr_delivered + c.prior_cwnd - 1) // c.prior_cwnd \
                - self.prr_out
        else:
            sndcnt = max(self.prr_delivered - self.prr_out, newly_acked_sacked)
            if flag & FLAG_SND_UNA_ADVANCED and not newly_lost:
                sndcnt += 1
            sndcnt = min(delta, sndcnt)
        # force a fast retransmit upon entering fast recovery
        sndcnt = max(sndcnt, 0 if self.prr_out else 1)
        c.cwnd = in_flight + sndcnt

    def end_cwnd_reduction(self) -> None:
        """tcp_end_cwnd_reduction: cwnd to ssthresh in CWR or Recovery (unless undone)."""
        c = self.c
        if c.ssthresh < TCP_INFINITE_SSTHRESH and \
                (self.ca_state == CA_CWR or self.undo_marker):
            c.cwnd = c.ssthresh
            c.cwnd_stamp = c.host.now
        c.ca.cwnd_event(c, CA_EVENT_COMPLETE_CWR)

    def enter_recovery(self, ece_ack: bool) -> None:
        """tcp_enter_recovery."""
        c = self.c
        c.host.mib["TcpExtTCPRenoRecovery" if self.is_reno() else "TcpExtTCPSackRecovery"] += 1
        self.prior_ssthresh = 0
        self.init_undo()
        if not self.in_cwnd_reduction():
            if not ece_ack:
                self.prior_ssthresh = c.current_ssthresh()
            self.init_cwnd_reduction()
        self.set_ca_state(CA_RECOVERY)

    # ------------------------------------------------------------------ the state machine
    def fastretrans_alert(self, prior_snd_una: int, num_dupack: int, flag: int) -> tuple[int, int]:
        """tcp_fastretrans_alert: what a dubious ACK means.  Returns (flags, rexmit)."""
        c = self.c
        if not self.rtx and self.sacked_out:
            self.sacked_out = 0
        # D. leave a state once high_seq is ACKed
        if self.ca_state == CA_OPEN:
            c.retrans_stamp = 0
        elif not _before(c.snd_una, self.high_seq):
            if self.ca_state == CA_CWR:
                if c.snd_una != self.high_seq:
                    self.end_cwnd_reduction()
                    self.set_ca_state(CA_OPEN)
            elif self.ca_state == CA_RECOVERY:
                if self.is_reno():
                    self.sacked_out = 0
                if self.try_undo_recovery():
                    return flag, REXMIT_NONE
                self.end_cwnd_reduction()
        # E. process the state
        state = self.ca_state
        if state == CA_RECOVERY:
            if not flag & FLAG_SND_UNA_ADVANCED:
                if self.is_reno():
                    self.add_reno_sack(num_dupack)
            else:
                stop, _do_lost = self.try_undo_partial(prior_snd_una)
                if stop:
                    return flag, REXMIT_NONE
            if self.try_undo_dsack():
                self.try_to_open(flag)
            flag = self.identify_packet_loss(flag)
            if self.ca_state != CA_RECOVERY:
                if not self.time_to_recover():
                    return flag, REXMIT_NONE
                self.enter_recovery(False)
            return flag, REXMIT_LOST
        if state == CA_LOSS:
            rexmit = self.process_loss(flag, num_dupack)
            if rexmit is not None and self.ca_state == CA_LOSS and rexmit == REXMIT_NEW:
                return flag, rexmit
            if rexmit is None:
                rexmit = REXMIT_NONE
            flag = self.identify_packet_loss(flag)
            if not (self.ca_state == CA_OPEN or flag & FLAG_LOST_RETRANS):
                return flag, rexmit
            # the window was undone or a retransmission is lost: start over below
        if self.is_reno():
            if flag & FLAG_SND_UNA_ADVANCED:
                self.sacked_out = 0
            self.add_reno_sack(num_dupack)
        if self.ca_state <= CA_DISORDER:
            self.try_undo_dsack()
        flag = self.identify_packet_loss(flag)
        if not self.time_to_recover():
            self.try_to_open(flag)
            return flag, REXMIT_NONE
        self.enter_recovery(False)
        return flag, REXMIT_LOST

    def process_loss(self, flag: int, num_dupack: int) -> int | None:
        """tcp_process_loss: ACKs after an RTO, with F-RTO (RFC 5682) when tcp_frto is on.
        Returns the rexmit decision, or None when the caller stops (undone or recovered)."""
        c = self.c
        recovered = not _before(c.snd_una, self.high_seq)
        if flag & FLAG_SND_UNA_ADVANCED and self.try_undo_loss(False):
            return None
        if self.frto:
            if flag & FLAG_ORIG_SACK_ACKED and self.try_undo_loss(True):
                return None
            if _after(c.snd_nxt, self.high_seq):
                if flag & FLAG_DATA_SACKED or num_dupack:
                    self.frto = False            # step 3.a: the loss was real
            elif flag & FLAG_SND_UNA_ADVANCED and not recovered:
                self.high_seq = c.snd_nxt
                # step 2.b: send new data instead of retransmitting, if there is any
                if c._unsent() > 0 and _after((c.snd_una + c.snd_wnd) & M32, c.snd_nxt):
                    return REXMIT_NEW
                self.frto = False
        if recovered:
            self.try_undo_recovery()
            return None
        if self.is_reno():
            if _after(c.snd_nxt, self.high_seq) and num_dupack:
                self.add_reno_sack(num_dupack)
            elif flag & FLAG_SND_UNA_ADVANCED:
                self.sacked_out = 0
        return REXMIT_LOST

    def enter_loss(self) -> None:
        """tcp_enter_loss (RTO): everything not SACKed and not just sent is lost; cwnd is
        the packets in flight plus one; ssthresh from the module unless already reduced."""
        c = self.c
        sysctl = c.host.sysctl
        new_recovery = self.ca_state < CA_RECOVERY
        self._timeout_mark_lost()
        if self.ca_state <= CA_DISORDER or not _after(self.high_seq, c.snd_una) or \
                (self.ca_state == CA_LOSS and not c.retransmits):
            self.prior_ssthresh = c.current_ssthresh()
            c.prior_cwnd = c.cwnd
            c.ssthresh = c.ca.ssthresh(c)
            c.ca.cwnd_event(c, CA_EVENT_LOSS)
            self.init_undo()
        c.cwnd = self.in_flight() + 1
        c.cwnd_cnt = 0
        c.cwnd_stamp = c.host.now
        reordering = sysctl["net.ipv4.tcp_reordering"]
        if self.ca_state <= CA_DISORDER and self.sacked_out >= reordering:
            self.reordering = min(self.reordering, reordering)
        self.set_ca_state(CA_LOSS)
        self.high_seq = c.snd_nxt
        c.tlp_high_seq = -1
        self.frto = bool(sysctl["net.ipv4.tcp_frto"]) and (new_recovery or bool(c.retransmits))

    def _timeout_mark_lost(self) -> None:
        """tcp_timeout_mark_lost: SACKed segments stay SACKed unless the head is SACKed
        (the receiver reneged); the rest is lost, but not what was sent within RACK.rtt."""
        c = self.c
        if not self.rtx:
            return
        head = self.rtx[0]
        reneg = bool(head.sacked & SACKED_ACKED)
        if reneg:
            c.host.mib["TcpExtTCPSACKReneging"] += 1
            self.sacked_out = 0
            self.is_sack_reneg = True
        elif self.is_reno():
            self.sacked_out = 0
        now = c.host.now
        for skb in self.rtx:
            if reneg:
                skb.sacked &= ~SACKED_ACKED
            elif skb is not head and self.rack_rtt - (now - skb.time) > 0:
                continue        # sent too recently to call lost
            self.mark_lost(skb)
        if reneg:
            self.highest_sack = None

    # ------------------------------------------------------------------ retransmission
    def xmit_retransmit_queue(self) -> None:
        """tcp_xmit_retransmit_queue: resend the lost segments, in order, while cwnd allows.
        Lost segments that left in one burst go again together (one skb of Linux's, cut to
        what cwnd allows, tcp_retransmit_skb)."""
        c = self.c
        if not self.rtx:
            return
        mib = c.host.mib
        rearm = False
        head = self.rtx[0]
        max_segs = c._tso_segs(c._effective_mss())
        eligible = LOST
        i = 0
        while i < len(self.rtx):
            skb = self.rtx[i]
            segs = c.cwnd - self.in_flight()
            if segs <= 0:
                break
            if self.retrans_out >= self.lost_out:
                break
            if skb.sacked & (LOST | SACKED_ACKED | SACKED_RETRANS) != eligible:
                i += 1
                continue
            segs = min(segs, max_segs)
            mss = c._effective_mss()
            if skb.length > mss:
                self.fragment(skb, mss)         # the path MTU dropped since it was sent
            group = [skb]
            j = i + 1
            while j < len(self.rtx) and len(group) < segs:
                nxt = self.rtx[j]
                if nxt.burst != skb.burst or \
                        nxt.sacked & (LOST | SACKED_ACKED | SACKED_RETRANS) != eligible:
                    break
                if nxt.length > mss:
                    self.fragment(nxt, mss)
                group.append(nxt)
                j += 1
            burst = self.new_burst()
            if len(group) == 1:
                c._retransmit_skb(skb)
                skb.burst = burst
            else:
                for k, g in enumerate(group):
                    c._transmit_skb(g, psh=k == len(group) - 1)
                    self.mark_retransmitted(g)
                    g.burst = burst
            n = len(group)
            mib["TcpExtTCPSlowStartRetrans" if self.ca_state == CA_LOSS
                else "TcpExtTCPFastRetrans"] += n
            if self.in_cwnd_reduction():
                self.prr_out += n
            if skb is head and not c.reo_pending():
                rearm = True
            i = self.rtx.index(group[-1]) + 1 if group[-1] in self.rtx else i + 1
        if rearm:
            c._reset_rto_timer()

    def mark_retransmitted(self, skb: Skb) -> None:
        """tcp_retransmit_skb's bookkeeping after the segment went out."""
        c = self.c
        skb.sacked |= RETRANS
        self.retrans_out += 1
        if not c.retrans_stamp:
            c.retrans_stamp = skb.time or 1
        if self.undo_retrans < 0:
            self.undo_retrans = 0
        self.undo_retrans += 1

    def fragment(self, skb: Skb, length: int) -> None:
        """tcp_fragment: cut `skb` after `length` bytes; the tail keeps its marks (and counts
        as one more packet lost or retransmitted where the head is)."""
        i = self.rtx.index(skb)
        tail = Skb((skb.seq + length) & M32, skb.end_seq, skb.fin, skb.time, skb.delivered,
                   skb.burst)
        tail.order = skb.order
        tail.sacked = skb.sacked
        tail.psh = skb.psh
        skb.psh = False
        skb.end_seq = tail.seq
        skb.fin = False
        if tail.sacked & LOST:
            self.lost_out += 1
        if tail.sacked & SACKED_RETRANS:
            self.retrans_out += 1
        if tail.sacked & SACKED_ACKED:
            self.sacked_out += 1
        self.rtx.insert(i + 1, tail)

    def collapse_into(self, skb: Skb, room: int, wnd_end: int) -> None:
        """tcp_retrans_try_collapse: a small segment takes the following ones along while they
        fit in one MSS (not SACKed ones, not beyond the window)."""
        rtx = self.rtx
        i = rtx.index(skb)
        while i + 1 < len(rtx):
            nxt = rtx[i + 1]
            if nxt.sacked & SACKED_ACKED or skb.fin or skb.end_seq in self.c.eor_seqs:
                break       # never across a MSG_EOR record end (tcp_skb_can_collapse)
            if skb.length + nxt.length > room:
                break
            if _after(nxt.end_seq, wnd_end):
                break
            # tcp_collapse_retrans: the marks of the one taken in are dropped with it
            if nxt.sacked & SACKED_RETRANS:
                self.retrans_out -= 1
            if nxt.sacked & LOST:
                self.lost_out -= 1
            skb.sacked |= nxt.sacked & EVER_RETRANS
            skb.psh |= nxt.psh                  # the flags are merged too
            skb.end_seq = nxt.end_seq
            skb.fin = nxt.fin
            del rtx[i + 1]
