"""The sending side's output, as Linux's tcp_write_xmit and tcp_retransmit_skb shape it:
which bytes leave when, cut how (GSO bursts, PSH), held by what (cwnd, the peer's window,
Nagle, TCP_CORK/MSG_MORE, MSG_EOR records, TSO deferral), and the congestion window's
bookkeeping around it (tcp_cwnd_validate, restart after idle).

`SendSide` is a part of `Connection`: it reads the send queue (sndq from snd_una, snd_nxt, the
FIN and EOR marks) and the scoreboard (`rec`), and hands each new segment to the scoreboard
(`Recovery.on_sent`).  Which segments are lost and when to resend them is decided in
recovery.py; this module only puts them on the wire.
"""
from __future__ import annotations

from ustack._segment import ACK, FIN, PSH
from ustack.tcp import cong
from ustack.tcp import states as S
from ustack.tcp.cong import CA_OPEN
from ustack.tcp.common import (GSO_MAX_SIZE, M32, NEVER, TCP_INIT_CWND, TCP_RTO_MAX,
                               _after, _before)
from ustack.tcp.recovery import Skb
from ustack.tcp.timers import T_LOSS_PROBE, T_NONE, T_PROBE0


class SendSide:
    """Output of a `Connection` (a mixin: no state of its own)."""

    __slots__ = ()

    def _unsent(self) -> int:
        sent = (self.snd_nxt - self.snd_una) & M32
        if self.state in (S.SYN_SENT, S.SYN_RECV):
            return len(self.sndq)
        if self.fin_queued and not _before(self.snd_nxt, (self.fin_seq + 1) & M32):
            return 0
        return len(self.sndq) - sent

    def _output(self, push_one: int = 0, nagle_off: bool = False,
                cork: bool | None = None) -> None:
        """Send what the windows allow (Linux tcp_write_xmit).

        Linux sends the write queue a GSO burst at a time: each turn of its loop takes the
        head of the unsent data (an skb of up to size_goal bytes), lets out as many MSS as
        the congestion window's quota and the TSO autosizing allow, and hands them to the
        device as one packet that is cut into MSS segments, PSH on the last one.  Turns may
        be deferred to wait for a bigger burst (tcp_tso_should_defer); a lone sub-MSS tail
        waits under Nagle's rule.  push_one=1 sends at most one burst, push_one=2 one even
        past cwnd (the tail loss probe)."""
        state = self.state
        if state not in (S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
            return
        seq = self.snd_nxt
        if len(self.sndq) <= ((seq - self.snd_una) & M32) and not (
                self.fin_queued and seq == self.fin_seq):
            # nothing new to send (a receiver's usual case): what the loop below would do
            # with an empty queue, without sizing bursts for it
            eors = self.eor_seqs
            while eors and not _after(eors[0], seq) and not _after(eors[0], self.snd_una):
                eors.popleft()
            if self.rec.in_flight() >= self.cwnd:
                self._cwnd_validate(True)
            return
        mss = self._effective_mss()
        sndq = self.sndq
        rec = self.rec
        sent = 0
        cwnd_limited = False
        wnd_end = (self.snd_una + self.snd_wnd) & M32
        max_segs = self._tso_segs(mss)
        size_goal = self._size_goal(mss)
        nonagle = nagle_off or self.nodelay
        if cork is None:
            cork = self.cork
        if nagle_off:
            cork = False
        eors = self.eor_seqs
        while eors and not _after(eors[0], self.snd_nxt):
            if not _after(eors[0], self.snd_una):
                eors.popleft()
            else:
                break
        while True:
            seq = self.snd_nxt
            offset = (seq - self.snd_una) & M32
            avail = len(sndq) - offset
            fin_pending = self.fin_queued and not _after(seq, self.fin_seq) and \
                not _before(seq, self.snd_una)
            if avail <= 0 and not (fin_pending and seq == self.fin_seq):
                break
            avail = max(avail, 0)
            in_flight = rec.in_flight()
            quota = 0 if in_flight >= self.cwnd else \
                min(max(self.cwnd >> 1, 1), self.cwnd - in_flight)        # tcp_cwnd_test
            if not quota:
                if push_one != 2:
                    cwnd_limited = True
                    break
                quota = 1
            quota = min(quota, max_segs)
            skb_len = min(avail, max(size_goal, quota * mss))   # the send head (tcp_grow_skb)
            for e in eors:          # an EOR record is an skb of its own (tcp_skb_can_collapse)
                if _after(e, seq):
                    skb_len = min(skb_len, (e - seq) & M32)
                    break
            is_tail = skb_len == avail
            fin = fin_pending and is_tail
            tso_segs = max(1, -(-skb_len // mss))
            first = min(skb_len, mss)
            if _after((seq + first + (1 if fin and skb_len <= mss else 0)) & M32, wnd_end):
                if self.snd_wnd == 0 and not rec.rtx:                  # tcp_snd_wnd_test
                    self._arm_persist()
                break
            if tso_segs == 1:
                if skb_len < mss and not fin and push_one != 2 and is_tail and \
                        (cork or (not nonagle and self._minshall_check())):
                    break   # corked, or Nagle with Minshall's rule: one small segment in flight
                    #         at most (tcp_nagle_check; only the last skb waits)
            elif not push_one and self._tso_should_defer(seq, skb_len, is_tail, fin,
                                                         max_segs, mss):
                cwnd_limited = True
                break
            chunk = skb_len
            if tso_segs > 1:
                chunk = min(skb_len, self._mss_split_point(seq, skb_len, is_tail, mss, quota,
                                                           nonagle, cork))
            n_segs = max(1, -(-chunk // mss))
            rec.new_burst()
            # TSO: the burst leaves as one super-segment the device cuts into MSS segments
            tso = n_segs > 1 and self.host.tso and chunk + 120 < 65535
            burst_seq = self.snd_nxt
            flags = ACK
            for k in range(n_segs):
                seg_seq = self.snd_nxt
                n = min(mss, chunk - k * mss)
                last = k == n_segs - 1
                seg_fin = fin and last and chunk == skb_len
                flags = ACK
                end = (seg_seq + n) & M32
                # its own mark: the end of a pushed write, or of a MSG_EOR record
                own_psh = last and bool(n) and ((offset + chunk == len(sndq) and self.tail_push)
                                                or end in eors)
                if own_psh or (last and n_segs > 1):
                    flags |= PSH    # ... or the last segment of a burst (tcp_transmit_skb)
                if seg_fin:
                    flags |= FIN    # FIN rides on the last data segment, or goes alone
                self._send_new(seg_seq, n, flags, own_psh, emit=not tso)
                if n < mss:
                    self.snd_sml = self.snd_nxt       # tcp_minshall_update
            if tso:
                boff = (burst_seq - self.snd_una) & M32
                self._emit(flags, burst_seq, bytes(sndq[boff:boff + chunk]), gso=mss)
            sent += n_segs
            if push_one:
                break
        if sent and rec.in_cwnd_reduction():
            rec.prr_out += sent
        cwnd_limited |= rec.in_flight() >= self.cwnd
        if sent or cwnd_limited:
            self._cwnd_validate(cwnd_limited)
        if sent and push_one != 2:
            self._schedule_loss_probe(False)
        if not sent and not rec.rtx and self._unsent() > 0 and self.t_rto == NEVER:
            self._arm_persist()     # tcp_check_probe_timer: held data goes after one RTO

    def _send_new(self, seq: int, n: int, flags: int, own_psh: bool = False,
                  emit: bool = True) -> None:
        """One new segment on the wire and in the retransmission queue
        (tcp_event_new_data_sent); `emit` False: the caller sends it within a TSO burst."""
        host = self.host
        rec = self.rec
        offset = (seq - self.snd_una) & M32
        if rec.in_flight() == 0 and not rec.rtx:
            self._tx_start()
        prior_packets = rec.packets_out
        if emit:
            self._emit(flags, seq, bytes(self.sndq[offset:offset + n]))
        fin = bool(flags & FIN)
        end = (seq + n + fin) & M32
        self.snd_nxt = end
        rec.on_sent(seq, end, fin, host.now).psh = own_psh
        self.last_snd_data_time = host.now
        if (host.now - self.lrcvtime) < self.ato:
            self.pingpong = True  # Linux tcp_event_data_sent: a reply within ato
        if _after(self.snd_nxt, self.snd_max):
            self.snd_max = self.snd_nxt
        host.mib["TcpExtTCPOrigDataSent"] += 1
        if self.misc_kind == T_PROBE0:
            # the transmit timer now serves the RTO (Linux: one icsk timer for both)
            self.t_misc = NEVER
            self.misc_kind = T_NONE
        # the RTO starts with the first packet in flight, and takes over from a pending probe
        if not prior_packets or (self.t_rto != NEVER and self.rto_kind == T_LOSS_PROBE):
            self._rearm_rto()

    def _minshall_check(self) -> bool:
        """tcp_nagle_check's other half: packets are out and a sub-MSS segment among them is
        not yet acknowledged (tcp_minshall_check)."""
        return bool(self.rec.rtx) and _after(self.snd_sml, self.snd_una) and \
            not _after(self.snd_sml, self.snd_nxt)

    def _pacing_rate(self) -> int:
        """tcp_update_pacing_rate, bytes per second (used only to size bursts here: without
        the fq qdisc Linux does not pace reno or cubic)."""
        srtt_us = max(self.srtt, 1) * 1000
        ratio = 200 if self.cwnd < self.ssthresh // 2 else 120
        return self._effective_mss() * max(self.cwnd, self.rec.packets_out) * ratio * 10_000 \
            // srtt_us

    def _tso_segs(self, mss: int) -> int:
        """tcp_tso_segs / tcp_tso_autosize: about 1 ms of data at the pacing rate per burst
        (at least 2 segments), a whole 64 KB burst when the path's RTT is tiny."""
        if not self.srtt:
            return GSO_MAX_SIZE // mss
        nbytes = self._pacing_rate() >> 10
        min_rtt_us = max(self.rec.min_rtt, 0) * 1000
        r = min_rtt_us >> 9
        if r < 32:
            nbytes += GSO_MAX_SIZE >> r
        nbytes = min(nbytes, GSO_MAX_SIZE)
        return max(nbytes // mss, 2)

    def _size_goal(self, mss: int) -> int:
        """tcp_xmit_size_goal: sendmsg's skb size, a whole number of MSS up to 64 KB, bounded
        by half the largest window the peer offered (tcp_bound_to_half_wnd)."""
        goal = GSO_MAX_SIZE
        cutoff = self.max_window >> 1 if self.max_window > 536 else self.max_window
        if cutoff and goal > cutoff:
            goal = max(cutoff, 68 - 20)
        return max((goal // mss) * mss, mss)

    def _mss_split_point(self, seq: int, skb_len: int, is_tail: bool, mss: int, quota: int,
                         nonagle: bool, cork: bool = False) -> int:
        """tcp_mss_split_point: how much of the head skb one burst takes."""
        window = (self.snd_una + self.snd_wnd - seq) & M32
        max_len = mss * quota
        if max_len <= window and not is_tail:
            return max_len
        needed = min(skb_len, window)
        if max_len <= needed:
            return max_len
        partial = needed % mss
        if partial and (cork or (not nonagle and self._minshall_check())):
            return needed - partial
        return needed

    def _tso_should_defer(self, seq: int, skb_len: int, is_tail: bool, fin: bool,
                          max_segs: int, mss: int) -> bool:
        """tcp_tso_should_defer: hold a multi-MSS head back when only a sliver of it may go
        now and an ACK that frees more room is about to come."""
        rec = self.rec
        now = self.host.now
        if rec.ca_state >= cong.CA_RECOVERY:
            return False
        if now - self.last_snd_data_time > 1:
            return False        # nothing sent within the last millisecond
        send_win = (self.snd_una + self.snd_wnd - seq) & M32
        cong_win = (self.cwnd - rec.in_flight()) * mss
        limit = min(send_win, cong_win)
        if limit >= max_segs * mss:
            return False
        if not is_tail and limit >= skb_len:
            return False
        if limit >= min(self.snd_wnd, self.cwnd * mss) // 3:      # tcp_tso_win_divisor 3
            return False
        if not rec.rtx:
            return False
        expected_ack = rec.rtx[0].time + self.srtt
        if expected_ack - now > min(self.srtt >> 1, 1):
            return False        # the ACK that would make room is not imminent
        if cong_win < send_win:
            if cong_win <= skb_len:
                return True
        elif send_win <= skb_len:
            return True
        return not fin

    def _tx_start(self) -> None:
        """Linux tcp_event_data_sent with nothing in flight: CA_EVENT_TX_START."""
        self.ca.cwnd_event(self, cong.CA_EVENT_TX_START)

    def _cwnd_validate(self, is_cwnd_limited: bool) -> None:
        """tcp_cwnd_validate (RFC 7661): remember whether cwnd was the limit in this window;
        an application-limited sender's unused cwnd decays (tcp_cwnd_application_limited)."""
        rec = self.rec
        if not _before(self.snd_una, self.cwnd_usage_seq) or is_cwnd_limited or \
                (not self.is_cwnd_limited and rec.packets_out > self.max_packets_out):
            self.is_cwnd_limited = is_cwnd_limited
            self.max_packets_out = rec.packets_out
            self.cwnd_usage_seq = self.snd_nxt
        now = self.host.now
        if cong.is_cwnd_limited(self):
            self.cwnd_used = 0
            self.cwnd_stamp = now
        else:
            if rec.packets_out > self.cwnd_used:
                self.cwnd_used = rec.packets_out
            if self.host.sysctl["net.ipv4.tcp_slow_start_after_idle"] and \
                    now - self.cwnd_stamp >= self.rto:
                if rec.ca_state == CA_OPEN:
                    win_used = max(self.cwnd_used, TCP_INIT_CWND)
                    if win_used < self.cwnd:
                        self.ssthresh = self.current_ssthresh()
                        self.cwnd = (self.cwnd + win_used) >> 1
                    self.cwnd_used = 0
                self.cwnd_stamp = now

    def _slow_start_after_idle_check(self) -> None:
        """tcp_slow_start_after_idle_check / tcp_cwnd_restart: after an idle period longer
        than the RTO, cwnd halves once per RTO idle, down to the initial window."""
        if not self.host.sysctl["net.ipv4.tcp_slow_start_after_idle"] or self.rec.rtx:
            return
        delta = self.host.now - self.last_snd_data_time
        if delta <= self.rto:
            return
        self.ca.cwnd_event(self, cong.CA_EVENT_CWND_RESTART)
        self.ssthresh = self.current_ssthresh()
        restart = min(TCP_INIT_CWND, self.cwnd)
        cwnd = self.cwnd
        delta -= self.rto
        while delta > 0 and cwnd > restart:
            cwnd >>= 1
            delta -= self.rto
        self.cwnd = max(cwnd, restart)
        self.cwnd_stamp = self.host.now
        self.cwnd_used = 0

    # the clock as the congestion modules read it

    def now_ms(self) -> int:
        return self.host.now

    def now_us(self) -> int:
        return self.host.now * 1000

    @property
    def lsndtime(self) -> int:
        return self.last_snd_data_time

    def _write_wakeup(self) -> None:
        """tcp_write_wakeup with the window open: data held by Nagle or a cork leaves, as much
        of the send head as one MSS and the window allow, with PSH."""
        mss = self._effective_mss()
        seq = self.snd_nxt
        offset = (seq - self.snd_una) & M32
        n = min(len(self.sndq) - offset, mss, (self.snd_una + self.snd_wnd - seq) & M32)
        for e in self.eor_seqs:
            if _after(e, seq):
                n = min(n, (e - seq) & M32)
                break
        fin = self.fin_queued and ((seq + n) & M32) == self.fin_seq
        if n <= 0 and not fin:
            return
        self.rec.new_burst()
        self._send_new(seq, max(n, 0), ACK | PSH | (FIN if fin else 0), True)
        if n < mss:
            self.snd_sml = self.snd_nxt
        self.backoff = 0
        self.probes = 0

    def _arm_persist(self) -> None:
        if self.misc_kind != T_PROBE0:
            self.misc_kind = T_PROBE0
            self.t_misc = self.host.now + min(self.rto << self.backoff, TCP_RTO_MAX)

    def _transmit_skb(self, skb: Skb, psh: bool = False) -> None:
        """Send a segment of the retransmission queue again, as it was cut (Linux
        __tcp_retransmit_skb: counted in TcpRetransSegs, stamped, EVER_RETRANS)."""
        off = (skb.seq - self.snd_una) & M32
        n = skb.length
        payload = bytes(self.sndq[off:off + n]) if n > 0 else b""
        flags = ACK | (FIN if skb.fin else 0)
        if psh or (payload and skb.psh):
            flags |= PSH
        self._emit(flags, skb.seq, payload)
        host = self.host
        host.mib["TcpRetransSegs"] += 1
        if self.log is not None:
            self.note("retransmit", skb.seq, n)
        self.total_retrans += 1
        skb.time = host.now
        self.rec.tx_count += 1
        skb.order = self.rec.tx_count
        skb.sacked |= 0x80      # EVER_RETRANS

    def _retransmit_skb(self, skb: Skb) -> None:
        """Linux tcp_retransmit_skb: a segment larger than the MSS now is cut to it first
        (tcp_fragment: the path MTU dropped); a small segment takes the next ones along
        (tcp_retrans_try_collapse); then it goes out marked as retransmitted."""
        rec = self.rec
        mss = self._effective_mss()
        if skb.length > mss:
            rec.fragment(skb, mss)
        if self.host.sysctl["net.ipv4.tcp_retrans_collapse"] and \
                skb.length < self._effective_mss():
            rec.collapse_into(skb, self._effective_mss(), (self.snd_una + self.snd_wnd) & M32)
        self._transmit_skb(skb)
        rec.mark_retransmitted(skb)
