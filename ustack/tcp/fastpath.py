"""Header prediction: the ESTABLISHED fast path of Linux's tcp_rcv_established, as the
readable spec.  ext/_fastpath.pyx translates this one function to C (ustack._fastpath); both
must leave the same bytes, states and counters behind (tests/core/test_fastpath.py).

The prediction (Linux's pred_flags, `Connection.pred` here) is on while nothing unusual is
going on: no out-of-order data queued, a non-zero window offered, receive memory left.  It is
turned on when the handshake completes (after an active open only without window scaling, as
tcp_finish_connect does), by tcp_fast_path_check after in-order data was queued on the slow
path and when the peer's window changes; it is turned off when data goes to the out-of-order
queue and when a zero window is offered.

A segment is predicted when, in ESTABLISHED with the prediction on:
  * its flags are exactly ACK (PSH aside), its header is the expected length (20 bytes, or 32
    with timestamps: NOP NOP TS and nothing else), its window field equals snd_wnd >>
    snd_wscale (the window does not change);
  * seq == rcv_nxt, and the ACK is not beyond what was sent;
  * with timestamps: TSval is not older than ts_recent (else PAWS is checked on the slow path).
Then:
  * a pure ACK goes to tcp_ack without the slow path's window and SACK work (TcpExtTCPHPAcks
    when it advances snd_una), and new data may be sent;
  * data is queued at once (TcpExtTCPHPHits), the delayed-ACK engine runs, tcp_ack runs only
    if the ACK moved, and the ACK decision is made as on the slow path.
Anything else returns False having touched nothing, and the caller takes the slow path.

Predicted data whose memory is not reserved yet goes to "step5", as in Linux: tcp_ack's slow
path and tcp_data_queue, without the checks of tcp_validate_incoming, and not counted as a
hit.  Receive memory is reserved in whole pages (sk_forward_alloc, `Connection.fwd_alloc`)
by sk_rmem_schedule and given back a page at a time as the application reads, so the first
segments of a connection, and many segments of a reader that takes each one at once, go
there (Linux counts the same TcpExtTCPHPHits; tests/conformance/data_header_prediction.pkt
checks it against the kernel).  ustack takes the whole slow path for data that does not fit
in the window it offered (the slow path queues what fits).
"""
from __future__ import annotations

import os
from typing import Any

from ustack._segment import ACK, PSH
from ustack.tcp.common import M32, TS_OPT_LEN
from ustack.tcp.rcvwnd import rx_truesize

_NOT_PSH = 0xFF & ~PSH


def rcv_established(conn: Any, seg: Any) -> bool:
    """Linux tcp_rcv_established's header prediction for a connection in ESTABLISHED whose
    prediction is on (`conn.pred`).  True: the segment was processed here.  False: not
    predicted, nothing was changed; the slow path must take it."""
    # the flag word: header length, flags (PSH ignored) and window as predicted
    if seg.flags & _NOT_PSH != ACK or seg.seq != conn.rcv_nxt or \
            seg.window != conn.snd_wnd >> conn.snd_wscale:
        return False
    if ((conn.snd_max - seg.ack) & M32) > 0x7FFFFFFF:
        return False                          # after(ack, snd_nxt)
    ts_ok = conn.ts_ok
    if seg.data_offset != (20 + TS_OPT_LEN if ts_ok else 20):
        return False
    if ts_ok and (not seg.aligned_ts or ((seg.ts_val - conn.ts_recent) & M32) >= 0x80000000):
        return False                          # not NOP NOP TS, or PAWS to check carefully
    payload = seg.payload
    n = len(payload)
    host = conn.host
    if n:
        # the slow path's cases (see the module's doc): nothing is touched yet
        win = (conn.rcv_wup + conn.rcv_wnd - conn.rcv_nxt) & M32
        if win > 0x7FFFFFFF or n > win:
            return False
        truesize = rx_truesize(n, host.rx_gso)
        if truesize > conn.fwd_alloc:
            # its memory is not reserved yet: Linux's step5, tcp_ack's slow path and then
            # tcp_data_queue, without tcp_validate_incoming (predicted: nothing to check)
            conn._rcv_synchronized(seg, validated=True)
            return True
    if ts_ok:
        # tcp_parse_aligned_timestamp, then tcp_store_ts_recent when the segment covers
        # rcv_wup (seq == rcv_nxt, so: rcv_nxt == rcv_wup)
        ecr = seg.ts_ecr
        conn.rcv_tsecr_ms = (ecr - conn.ts_off) & M32 if ecr else None
        if conn.rcv_nxt == conn.rcv_wup:
            conn.ts_recent = seg.ts_val
            conn.ts_recent_stamp = host.now
    if not n:
        # bulk data transfer: the sender's side
        conn._process_ack(seg, True)
        conn._output()                        # tcp_data_snd_check
        return True
    # bulk data transfer: the receiver's side
    host.mib["TcpExtTCPHPHits"] += 1
    conn._queue_rcv(payload, truesize, seg)  # tcp_queue_rcv + tcp_event_data_recv
    if seg.ack != conn.snd_una:
        conn._process_ack(seg, True)
        conn._output()
        if not conn.ack_pending:
            return True                       # the data sent carried the ACK
    else:
        conn.snd_wl1 = seg.seq                # tcp_update_wl
    conn._ack_snd_check()
    return True


def refuse(conn: Any, seg: Any) -> bool:
    """No header prediction: every segment takes the slow path (USTACK_FASTPATH=off)."""
    return False


def select(name: str | None = None) -> Any:
    """The header-prediction function a new Host uses: "c" (ustack._fastpath, the default
    when it is built), "python" (this module's spec) or "off" (none: the slow path for
    everything; the wire is the same, the TCPHP* counters are not).  `name` None: the
    environment's USTACK_FASTPATH, else the default."""
    if name is None:
        name = os.environ.get("USTACK_FASTPATH", "") or "c"
    if name == "python":
        return rcv_established
    if name == "off":
        return refuse
    if name != "c":
        raise ValueError(f"USTACK_FASTPATH is 'c', 'python' or 'off', not {name!r}")
    try:
        from ustack._fastpath import rcv_established as compiled
    except ImportError:       # not built (a source tree without its extensions)
        return rcv_established
    return compiled
