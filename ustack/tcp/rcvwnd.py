"""The receiving side's window and acknowledgements, as Linux computes them (tcp_input.c,
tcp_output.c): receive memory counted in skb truesize against sk_rcvbuf, the window offered
from the free memory (tcp_select_window, never shrinking), its growth (tcp_grow_window,
rcv_ssthresh), and the delayed-ACK engine (ato, quick-ACK mode, pingpong, tcp_cleanup_rbuf).

`ReceiveSide` is a part of `Connection`: it reads and writes the connection's receive fields
(rcv_nxt, rcv_wup, rcv_wnd, rcv_wscale, rcv_mss, rcvbuf, rmem_alloc, rcv_ssthresh,
window_clamp, scaling_ratio, and the ack_* / ato / quickack / pingpong state) and sends ACKs
through `send_ack()`; nothing else in the connection computes a window.
"""
from __future__ import annotations

from typing import Any

from ustack._segment import FIN, PSH, SYN
from ustack.tcp.common import (M32, MAX_WSCALE, NEVER, TCP_ATO_MIN, TCP_DELACK_MAX,
                               TCP_MAX_QUICKACKS, TCP_RMEM_TO_WIN_SCALE, TS_OPT_LEN)


def skb_truesize(payload_len: int) -> int:
    """The memory a received segment costs, as Linux counts it for a packet read from a TUN
    device: a kmalloc'ed buffer (NET_SKB_PAD + headers + data + skb_shared_info, rounded up to
    its size class) plus the sk_buff itself."""
    need = 64 + 60 + payload_len + 320
    size = 512
    while size < need:
        size <<= 1
    return size + 256


def rx_truesize(payload_len: int, gso_size: int) -> int:
    """The memory of received text: one buffer, or for a super-segment handed over whole by
    an offloading link (gso_size: its segments' size) the buffers of the segments it stands
    for, as Linux counts a GRO'd packet."""
    if gso_size and payload_len > gso_size:
        return -(-payload_len // gso_size) * skb_truesize(gso_size)
    return skb_truesize(payload_len)


def win_from_space(space: int, scaling_ratio: int) -> int:
    """Linux tcp_win_from_space: memory to window by the payload/truesize ratio."""
    return (space * scaling_ratio) >> TCP_RMEM_TO_WIN_SCALE if space > 0 else 0


def initial_wscale(sysctl: Any, full_space: int, window_clamp: int) -> int:
    """Linux tcp_select_initial_window's scale: for the largest window this socket could ever
    offer (tcp_rmem[2] or rmem_max, within window_clamp), ilog2(space) - 15."""
    if not sysctl["net.ipv4.tcp_window_scaling"]:
        return 0
    space = max(full_space, sysctl["net.ipv4.tcp_rmem"][2], sysctl["net.core.rmem_max"])
    space = min(space, window_clamp)
    return max(0, min(space.bit_length() - 1 - 15, MAX_WSCALE))


def initial_window(full_space: int, window_clamp: int, mss: int) -> int:
    """Linux tcp_select_initial_window's window: the full space, a whole number of segments,
    at most 64K (a SYN's window is never scaled)."""
    space = min(window_clamp, full_space)
    if space > mss:
        space = (space // mss) * mss
    return min(space, 65535)


class ReceiveSide:
    """Receive window and delayed ACKs of a `Connection` (a mixin: no state of its own)."""

    __slots__ = ()

    def _win_from_space(self, space: int) -> int:
        """Linux tcp_win_from_space: memory to window by the measured payload/truesize ratio."""
        return win_from_space(space, self.scaling_ratio)

    def _space(self) -> int:
        """Linux tcp_space: the window the free receive memory is worth."""
        return self._win_from_space(self.rcvbuf - self.rmem_alloc)

    def _select_window(self) -> int:
        """The window to advertise, unscaled (Linux tcp_select_window + __tcp_select_window):
        free memory as window, capped by rcv_ssthresh, never shrinking the right edge already
        offered, aligned to the scale."""
        shift = self.rcv_wscale
        mss = self.rcv_mss
        free = self._space()
        allowed = self._win_from_space(self.rcvbuf)
        full = min(self.window_clamp, allowed)
        new = -1
        if mss > full:
            mss = full
            if mss <= 0:
                new = 0
        if new < 0 and free < (full >> 1):
            self.quickack = 0
            free = (free >> shift) << shift
            if free < (allowed >> 4) or free < mss:
                new = 0
        if new < 0:
            if free > self.rcv_ssthresh:
                free = self.rcv_ssthresh
            if shift:
                new = ((free + (1 << shift) - 1) >> shift) << shift
            else:
                new = self.rcv_wnd
                if new <= free - mss or new > free:
                    new = (free // mss) * mss if mss > 0 else free
                elif mss == full and free > new + (full >> 1):
                    new = free
        cur = self._rcv_window_now()
        if new < cur:
            # never shrink the offered window (RFC 9293 §3.8.6.2.2; tcp_select_window)
            new = ((cur + (1 << shift) - 1) >> shift) << shift
        maxwin = 65535 << shift
        return maxwin if new > maxwin else new

    def _init_buffer_space(self) -> None:
        """Linux tcp_init_buffer_space at the end of the handshake: the clamp is the full
        space less one segment (tcp_app_win), and rcv_ssthresh stays under it."""
        maxwin = self._win_from_space(self.rcvbuf)
        if self.window_clamp >= maxwin:
            self.window_clamp = maxwin
        if self.window_clamp > 2 * self.advmss and self.window_clamp + self.advmss > maxwin:
            self.window_clamp = max(2 * self.advmss, maxwin - self.advmss)
        self.rcv_ssthresh = min(self.rcv_ssthresh, self.window_clamp)

    def _grow_window(self, n: int, truesize: int) -> None:
        """Linux tcp_grow_window: raise rcv_ssthresh while segments use memory efficiently."""
        room = min(self.window_clamp, self._space()) - self.rcv_ssthresh
        if room <= 0:
            return
        if self._win_from_space(truesize) <= n:
            incr = 2 * self.advmss
        else:
            incr = 0
            ts = self._win_from_space(truesize) >> 1
            window = self._win_from_space(self.host.sysctl["net.ipv4.tcp_rmem"][2]) >> 1
            while self.rcv_ssthresh <= window:
                if ts <= n:
                    incr = 2 * self.rcv_mss
                    break
                ts >>= 1
                window >>= 1
        if incr:
            incr = max(incr, 2 * n)
            self.rcv_ssthresh += min(room, incr)
            self.quickack |= 1

    def _rcv_window_now(self) -> int:
        win = (self.rcv_wup + self.rcv_wnd - self.rcv_nxt) & M32
        return 0 if win > 0x7FFFFFFF else win

    def _measure_rcv_mss(self, seg: Any, n: int, truesize: int) -> None:
        """Linux tcp_measure_rcv_mss: learn the peer's segment size (and with it the
        payload/truesize ratio); note small pushes.  A GRO'd super-segment counts by its
        segment size (gso_size), its ratio by all of it."""
        size = self.host.rx_gso or n
        if size >= self.rcv_mss:
            if size != self.rcv_mss:
                self.scaling_ratio = max(1, (n << TCP_RMEM_TO_WIN_SCALE) // truesize)
            self.rcv_mss = min(size, self.advmss)
            if seg.flags & PSH:
                self.ack_pushed = max(self.ack_pushed, 1)
            return
        full = n + seg.data_offset
        hdr = 20 + (TS_OPT_LEN if self.ts_ok else 0)
        lss = self.last_seg_size
        self.last_seg_size = 0
        if full >= 536 + 20 or (full >= 88 + 20 and not seg.flags & (FIN | SYN | PSH | 0x20)):
            self.last_seg_size = full - hdr
            if self.last_seg_size == lss:
                self.rcv_mss = lss
                return
        self.ack_pushed = 2 if self.ack_pushed else 1

    def _event_data_recv(self, seg: Any, n: int, truesize: int) -> None:
        """Linux tcp_event_data_recv: the delayed-ACK engine's clock (ato) and window growth."""
        self.ack_pending = True
        self._measure_rcv_mss(seg, n, truesize)
        now = self.host.now
        if self.ato == 0:
            # the first data ever received: start in quick-ACK mode
            self._incr_quickack(TCP_MAX_QUICKACKS)
            self.ato = TCP_ATO_MIN
        else:
            m = now - self.lrcvtime
            if m <= TCP_ATO_MIN // 2:
                self.ato = (self.ato >> 1) + TCP_ATO_MIN // 2
            elif m < self.ato:
                self.ato = min((self.ato >> 1) + m, self.rto)
            elif m > self.rto:
                self._incr_quickack(TCP_MAX_QUICKACKS)
        self.lrcvtime = now
        if n >= 128:
            self._grow_window(n, truesize)

    def _incr_quickack(self, max_quickacks: int) -> None:
        """Linux tcp_incr_quickack: only ever raises the count."""
        q = self.rcv_wnd // (2 * max(self.rcv_mss, 1))
        if q == 0:
            q = 2
        q = min(q, max_quickacks)
        if q > self.quickack:
            self.quickack = q

    def _enter_quickack_mode(self) -> None:
        """Linux tcp_enter_quickack_mode."""
        self._incr_quickack(TCP_MAX_QUICKACKS)
        self.pingpong = False
        self.ato = TCP_ATO_MIN

    def _ack_snd_check(self) -> None:
        """Linux __tcp_ack_snd_check: ACK now, or let the delayed-ACK timer do it."""
        if not self.ack_pending:
            return
        unacked = (self.rcv_nxt - self.rcv_wup) & M32
        if (unacked > self.rcv_mss and self._select_window() >= self.rcv_wnd) \
                or (self.quickack and not self.pingpong) or self.ack_now or self.ooo:
            # (out-of-order text: Linux sends the first three duplicate ACKs at once and then
            # compresses SACKs by about 1 ms; ustack sends them all at once)
            self.send_ack()
            return
        self._send_delayed_ack()

    def _send_delayed_ack(self) -> None:
        """Linux tcp_send_delayed_ack: the timeout is ato, bounded by the RTT and mode."""
        ato = self.ato
        if ato > TCP_ATO_MIN:
            max_ato = 500
            if self.pingpong or self.ack_pushed:
                max_ato = TCP_DELACK_MAX
            if self.srtt:
                max_ato = min(max_ato, max(self.srtt, TCP_ATO_MIN))
            ato = min(ato, max_ato)
        ato = min(ato, TCP_DELACK_MAX)
        now = self.host.now
        timeout = now + max(ato, 1)  # a zero ato still waits for the next tick
        if self.t_delack != NEVER:
            if self.t_delack <= now + (ato >> 2):
                self.send_ack()  # the timer is about to fire anyway
                return
            if timeout >= self.t_delack:
                timeout = self.t_delack
        self.t_delack = timeout

    def _cleanup_rbuf(self, copied: int) -> None:
        """Linux tcp_cleanup_rbuf: after a read, ACK a pending small push that emptied the
        buffer, or announce a window that at least doubled."""
        time_to_ack = False
        if self.ack_pending:
            if ((self.rcv_nxt - self.rcv_wup) & M32) > self.rcv_mss or (
                    (self.ack_pushed == 2 or (self.ack_pushed and not self.pingpong))
                    and not self.rcv_bytes):
                time_to_ack = True
        if not time_to_ack and not self.rcv_fin and not self.rcv_shutdown:
            cur = self._rcv_window_now()
            if 2 * cur <= self.window_clamp:
                new = self._select_window()
                if new and new >= 2 * cur:
                    time_to_ack = True
        if time_to_ack:
            self.send_ack()
            self._arm()
