# cython: language_level=3
"""Header prediction in C: a line-for-line translation of ustack/tcp/fastpath.py's
rcv_established, with the receive-side steps it runs on every predicted data segment
(ustack/tcp/rcvwnd.py: tcp_queue_rcv, tcp_event_data_recv with tcp_measure_rcv_mss and
tcp_grow_window, __tcp_ack_snd_check with __tcp_select_window and tcp_send_delayed_ack)
translated too.  tcp_ack, the output engine and ACK building stay the Python core's: they are
called back.

The Python module is the statement; this one must leave exactly the same state behind
(tests/core/test_fastpath.py drives both over the same traffic and compares everything).
A prediction that fails returns False before anything is written.
"""
from libc.stdint cimport int64_t

ctypedef int64_t i64

cdef enum:
    _FIN = 0x01
    _SYN = 0x02
    _PSH = 0x08
    _ACK = 0x10
    _URG = 0x20
    _NOT_PSH = 0xF7
    _TS_OPT_LEN = 12
    _TCP_ATO_MIN = 40
    _TCP_DELACK_MAX = 200
    _TCP_MAX_QUICKACKS = 16
    _RMEM_TO_WIN_SCALE = 8

cdef i64 _M32 = 0xFFFFFFFF
cdef i64 _NEVER = 1 << 62


cdef inline i64 _skb_truesize(i64 payload_len):
    """rcvwnd.skb_truesize."""
    cdef i64 need = 64 + 60 + payload_len + 320
    cdef i64 size = 512
    while size < need:
        size <<= 1
    return size + 256


cdef inline i64 _wfs(i64 space, i64 ratio):
    """rcvwnd.win_from_space."""
    return (space * ratio) >> _RMEM_TO_WIN_SCALE if space > 0 else 0


cdef inline i64 _rcv_window_now(object conn):
    cdef i64 win = (<i64>conn.rcv_wup + <i64>conn.rcv_wnd - <i64>conn.rcv_nxt) & _M32
    return 0 if win > 0x7FFFFFFF else win


cdef i64 _select_window(object conn):
    """ReceiveSide._select_window."""
    cdef i64 shift = conn.rcv_wscale
    cdef i64 mss = conn.rcv_mss
    cdef i64 ratio = conn.scaling_ratio
    cdef i64 rcvbuf = conn.rcvbuf
    cdef i64 free = _wfs(rcvbuf - <i64>conn.rmem_alloc, ratio)
    cdef i64 allowed = _wfs(rcvbuf, ratio)
    cdef i64 clamp = conn.window_clamp
    cdef i64 full = clamp if clamp < allowed else allowed
    cdef i64 new = -1, cur, maxwin, ssthresh
    if mss > full:
        mss = full
        if mss <= 0:
            new = 0
    if new < 0 and free < (full >> 1):
        conn.quickack = 0
        free = (free >> shift) << shift
        if free < (allowed >> 4) or free < mss:
            new = 0
    if new < 0:
        ssthresh = conn.rcv_ssthresh
        if free > ssthresh:
            free = ssthresh
        if shift:
            new = ((free + (1 << shift) - 1) >> shift) << shift
        else:
            new = conn.rcv_wnd
            if new <= free - mss or new > free:
                new = (free // mss) * mss if mss > 0 else free
            elif mss == full and free > new + (full >> 1):
                new = free
    cur = _rcv_window_now(conn)
    if new < cur:
        new = ((cur + (1 << shift) - 1) >> shift) << shift
    maxwin = <i64>65535 << shift
    return maxwin if new > maxwin else new


cdef void _incr_quickack(object conn, i64 max_quickacks) except *:
    """ReceiveSide._incr_quickack."""
    cdef i64 mss = conn.rcv_mss
    cdef i64 q = <i64>conn.rcv_wnd // (2 * (mss if mss > 1 else 1))
    if q == 0:
        q = 2
    if q > max_quickacks:
        q = max_quickacks
    if q > <i64>conn.quickack:
        conn.quickack = q


cdef void _measure_rcv_mss(object conn, object host, int flags, int data_offset, i64 n,
                           i64 truesize) except *:
    """ReceiveSide._measure_rcv_mss."""
    cdef i64 gso = host.rx_gso
    cdef i64 size = gso if gso else n
    cdef i64 rcv_mss = conn.rcv_mss
    cdef i64 advmss, full, hdr, lss, ratio
    if size >= rcv_mss:
        if size != rcv_mss:
            ratio = (n << _RMEM_TO_WIN_SCALE) // truesize
            conn.scaling_ratio = ratio if ratio > 1 else 1
        advmss = conn.advmss
        conn.rcv_mss = size if size < advmss else advmss
        if flags & _PSH and <i64>conn.ack_pushed < 1:
            conn.ack_pushed = 1
        return
    full = n + data_offset
    hdr = 20 + (_TS_OPT_LEN if conn.ts_ok else 0)
    lss = conn.last_seg_size
    conn.last_seg_size = 0
    if full >= 536 + 20 or (full >= 88 + 20 and not flags & (_FIN | _SYN | _PSH | _URG)):
        conn.last_seg_size = full - hdr
        if full - hdr == lss:
            conn.rcv_mss = lss
            return
    conn.ack_pushed = 2 if conn.ack_pushed else 1


cdef void _grow_window(object conn, object host, i64 n, i64 truesize) except *:
    """ReceiveSide._grow_window."""
    cdef i64 ratio = conn.scaling_ratio
    cdef i64 clamp = conn.window_clamp
    cdef i64 space = _wfs(<i64>conn.rcvbuf - <i64>conn.rmem_alloc, ratio)
    cdef i64 ssthresh = conn.rcv_ssthresh
    cdef i64 room = (clamp if clamp < space else space) - ssthresh
    cdef i64 incr, ts, window
    if room <= 0:
        return
    if _wfs(truesize, ratio) <= n:
        incr = 2 * <i64>conn.advmss
    else:
        incr = 0
        ts = _wfs(truesize, ratio) >> 1
        window = _wfs(<i64>host.sysctl["net.ipv4.tcp_rmem"][2], ratio) >> 1
        while ssthresh <= window:
            if ts <= n:
                incr = 2 * <i64>conn.rcv_mss
                break
            ts >>= 1
            window >>= 1
    if incr:
        if incr < 2 * n:
            incr = 2 * n
        conn.rcv_ssthresh = ssthresh + (room if room < incr else incr)
        conn.quickack = <i64>conn.quickack | 1


cdef void _event_data_recv(object conn, object host, int flags, int data_offset, i64 n,
                           i64 truesize) except *:
    """ReceiveSide._event_data_recv."""
    cdef i64 now, m, ato, rto, v
    conn.ack_pending = True
    _measure_rcv_mss(conn, host, flags, data_offset, n, truesize)
    now = host.now
    ato = conn.ato
    if ato == 0:
        _incr_quickack(conn, _TCP_MAX_QUICKACKS)
        conn.ato = _TCP_ATO_MIN
    else:
        m = now - <i64>conn.lrcvtime
        rto = conn.rto
        if m <= _TCP_ATO_MIN // 2:
            conn.ato = (ato >> 1) + _TCP_ATO_MIN // 2
        elif m < ato:
            v = (ato >> 1) + m
            conn.ato = v if v < rto else rto
        elif m > rto:
            _incr_quickack(conn, _TCP_MAX_QUICKACKS)
    conn.lrcvtime = now
    if n >= 128:
        _grow_window(conn, host, n, truesize)


cdef void _send_delayed_ack(object conn, object host) except *:
    """ReceiveSide._send_delayed_ack."""
    cdef i64 ato = conn.ato
    cdef i64 max_ato, srtt, now, timeout, t_delack, v
    if ato > _TCP_ATO_MIN:
        max_ato = 500
        if conn.pingpong or conn.ack_pushed:
            max_ato = _TCP_DELACK_MAX
        srtt = conn.srtt
        if srtt:
            v = srtt if srtt > _TCP_ATO_MIN else _TCP_ATO_MIN
            if v < max_ato:
                max_ato = v
        if max_ato < ato:
            ato = max_ato
    if ato > _TCP_DELACK_MAX:
        ato = _TCP_DELACK_MAX
    now = host.now
    timeout = now + (ato if ato > 1 else 1)
    t_delack = conn.t_delack
    if t_delack != _NEVER:
        if t_delack <= now + (ato >> 2):
            conn.send_ack()
            return
        if timeout >= t_delack:
            timeout = t_delack
    conn.t_delack = timeout


cdef void _ack_snd_check(object conn, object host) except *:
    """ReceiveSide._ack_snd_check."""
    cdef i64 unacked
    if not conn.ack_pending:
        return
    unacked = (<i64>conn.rcv_nxt - <i64>conn.rcv_wup) & _M32
    if (unacked > <i64>conn.rcv_mss and _select_window(conn) >= <i64>conn.rcv_wnd) \
            or (conn.quickack and not conn.pingpong) or conn.ack_now or conn.ooo:
        conn.send_ack()
        return
    _send_delayed_ack(conn, host)


cdef void _step5(object conn, object host, object seg, int flags, int data_offset, i64 seq,
                 i64 ack, i64 n, i64 truesize, bint ts_ok) except *:
    """Predicted data whose memory is not reserved: Connection._rcv_synchronized(seg,
    validated=True).  Translated here for a pure receiver (the ACK moves nothing, nothing of
    ours in flight, no loss probe out, no FIN queued), where tcp_ack (Connection._process_ack)
    comes down to the timestamps, the probe count, rcv_tstamp and SND.WL1/WL2; anything else
    is left to the Python core."""
    cdef i64 now, ecr, fwd, wl1, window, snd_wnd
    if ack != <i64>conn.snd_una or conn.rec.packets_out or <i64>conn.tlp_high_seq >= 0 or \
            conn.fin_queued:
        conn._rcv_synchronized(seg, False, True)
        return
    now = host.now
    # _process_ack
    if ts_ok:
        ecr = seg.ts_ecr
        conn.rcv_tsecr_ms = ((ecr - <i64>conn.ts_off) & _M32) if ecr else None
        # _update_ts_recent: seq == rcv_nxt covers rcv_wup only when they are equal;
        # prediction saw TSval not older than ts_recent
        if seq == <i64>conn.rcv_wup:
            conn.ts_recent = seg.ts_val
            conn.ts_recent_stamp = now
    else:
        conn.rcv_tsecr_ms = None
    conn.probes = 0
    conn.rcv_tstamp = now
    # _may_update_window with ack == snd_una: a newer SND.WL1, or the same one and a larger
    # or zero window (the window is as predicted: it does not change)
    wl1 = conn.snd_wl1
    window = <i64>seg.window << <i64>conn.snd_wscale
    snd_wnd = conn.snd_wnd
    if ((wl1 - seq) & _M32) > 0x7FFFFFFF or (seq == wl1 and (window > snd_wnd or not window)):
        conn.snd_wl1 = seq
    conn.snd_wl2 = ack
    # _data_queue -> _queue_in_order: reserve, queue (ooo is empty while predicting)
    fwd = conn.fwd_alloc
    if truesize > fwd:
        fwd += ((truesize - fwd + 4095) // 4096) * 4096
    conn.fwd_alloc = fwd
    _queue_rcv(conn, host, seg, flags, data_offset, seq, n, truesize)
    # _fast_path_check
    if not conn.ooo and conn.rcv_wnd and <i64>conn.rmem_alloc < <i64>conn.rcvbuf:
        conn.pred = True
    conn._output()
    _ack_snd_check(conn, host)


cdef void _queue_rcv(object conn, object host, object seg, int flags, int data_offset,
                     i64 rcv_nxt, i64 n, i64 truesize) except *:
    """Connection._queue_rcv (tcp_queue_rcv + tcp_event_data_recv)."""
    conn.rcv_buf.append(seg.payload)
    conn.rcv_bytes = <i64>conn.rcv_bytes + n
    conn.rmem_alloc = <i64>conn.rmem_alloc + truesize
    conn.fwd_alloc = <i64>conn.fwd_alloc - truesize
    conn.rcv_truesize.append([n, truesize])
    conn.rcv_nxt = (rcv_nxt + n) & _M32
    _event_data_recv(conn, host, flags, data_offset, n, truesize)
    conn._notify = <int>conn._notify | 2


def rcv_established(object conn, object seg):
    """ustack.tcp.fastpath.rcv_established, compiled: True when header prediction took the
    segment, False (nothing changed) when the slow path must."""
    cdef int flags = seg.flags
    cdef i64 seq = seg.seq
    cdef i64 rcv_nxt = conn.rcv_nxt
    cdef i64 ack, n, win, gso, truesize, rcv_wup, ecr
    cdef bint ts_ok
    cdef int data_offset
    if flags & _NOT_PSH != _ACK or seq != rcv_nxt or \
            <i64>seg.window != (<i64>conn.snd_wnd >> <i64>conn.snd_wscale):
        return False
    ack = seg.ack
    if ((<i64>conn.snd_max - ack) & _M32) > 0x7FFFFFFF:
        return False
    ts_ok = conn.ts_ok
    data_offset = seg.data_offset
    if data_offset != (20 + _TS_OPT_LEN if ts_ok else 20):
        return False
    if ts_ok and (not seg.aligned_ts or
                  ((<i64>seg.ts_val - <i64>conn.ts_recent) & _M32) >= 0x80000000):
        return False
    payload = seg.payload
    n = len(payload)
    host = conn.host
    rcv_wup = conn.rcv_wup
    truesize = 0
    if n:
        win = (rcv_wup + <i64>conn.rcv_wnd - rcv_nxt) & _M32
        if win > 0x7FFFFFFF or n > win:
            return False
        gso = host.rx_gso
        if gso and n > gso:
            truesize = ((n + gso - 1) // gso) * _skb_truesize(gso)
        else:
            truesize = _skb_truesize(n)
        if truesize > <i64>conn.fwd_alloc:
            _step5(conn, host, seg, flags, data_offset, seq, ack, n, truesize, ts_ok)
            return True
    if ts_ok:
        ecr = seg.ts_ecr
        conn.rcv_tsecr_ms = ((ecr - <i64>conn.ts_off) & _M32) if ecr else None
        if rcv_nxt == rcv_wup:
            conn.ts_recent = seg.ts_val
            conn.ts_recent_stamp = host.now
    if not n:
        conn._process_ack(seg, True)
        conn._output()
        return True
    mib = host.mib
    mib["TcpExtTCPHPHits"] += 1
    _queue_rcv(conn, host, seg, flags, data_offset, rcv_nxt, n, truesize)
    if ack != <i64>conn.snd_una:
        conn._process_ack(seg, True)
        conn._output()
        if not conn.ack_pending:
            return True
    else:
        conn.snd_wl1 = seq
    _ack_snd_check(conn, host)
    return True
