"""A connection's timer kinds, named as Linux names them (inet_connection_sock.h, ICSK_TIME_*).

A connection has one entry on the host's timer wheel and four deadlines behind it:

* the transmit timer (``t_rto``), used by one kind at a time as Linux's icsk_retransmit_timer
  is: the retransmission timeout, the tail loss probe, or RACK's reordering timer;
* the delayed-ACK timer (``t_delack``);
* the "misc" timer (``t_misc``): the zero-window probe, or an orphan's FIN-WAIT-2 wait before
  it becomes a TIME-WAIT record (Linux uses the keepalive timer for that);
* the keepalive timer (``t_keep``): SO_KEEPALIVE's probes (Linux tcp_keepalive_timer).
"""
from __future__ import annotations

T_NONE = 0
T_RETRANS = 1          # ICSK_TIME_RETRANS
T_DACK = 2             # ICSK_TIME_DACK
T_PROBE0 = 3           # ICSK_TIME_PROBE0: zero-window probe
T_LOSS_PROBE = 5       # ICSK_TIME_LOSS_PROBE: tail loss probe
T_REO_TIMEOUT = 6      # ICSK_TIME_REO_TIMEOUT: RACK's reordering window
T_FIN_WAIT2 = 16       # ustack: an orphan's FIN-WAIT-2 wait (Linux: the keepalive timer)

NAMES = {T_NONE: "", T_RETRANS: "on", T_DACK: "delack", T_PROBE0: "persist",
         T_LOSS_PROBE: "on", T_REO_TIMEOUT: "on", T_FIN_WAIT2: "timewait"}


def timer_name(kind: int) -> str:
    """The word `ss -o` prints for a timer kind: timer:(on,...), (persist,...), ..."""
    return NAMES.get(kind, "")
