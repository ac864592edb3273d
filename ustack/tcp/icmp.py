"""ICMP errors for TCP, as Linux's tcp_v4_err takes them (net/ipv4/tcp_ipv4.c).

An ICMP destination-unreachable, time-exceeded or parameter-problem message quotes the IP
header and the first 8 bytes of the TCP segment that caused it; that finds the connection
(our port, the peer's address and port) and the sequence number, which must lie in
[snd_una, snd_nxt] or the message is ignored (OutOfWindowIcmps).  Then:

* fragmentation needed (PMTU, RFC 1191): the path MTU of the connection drops to the
  reported next-hop MTU (at least 552, ip_rt_min_pmtu), the MSS with it (tcp_sync_mss), and
  every segment in flight now too large is resent at the new size (tcp_simple_retransmit);
* on a connection still opening (SYN-SENT) any of these errors ends it: connect() fails with
  the error (ECONNREFUSED for a port unreachable, EHOSTUNREACH, ENETUNREACH ...);
* on an established connection it is a soft error: remembered, and reported instead of
  ETIMEDOUT if the connection later times out (sk_err_soft); a network or host unreachable
  for the oldest segment during backoff takes one backoff step back (RFC 6069,
  tcp_ld_RTO_revert);
* a half-open request socket is dropped silently when the error quotes its SYN-ACK.
"""
from __future__ import annotations

import errno as E
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ustack.tcp.connection import Connection

ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12
ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_FRAG_NEEDED = 4
IP_MIN_PMTU = 552            # net.ipv4.route.min_pmtu

# icmp_err_convert: (errno, fatal) for destination-unreachable codes 0..15
ICMP_ERR_CONVERT = (
    (E.ENETUNREACH, False), (E.EHOSTUNREACH, False), (E.ENOPROTOOPT, True),
    (E.ECONNREFUSED, True), (E.EMSGSIZE, False), (E.EOPNOTSUPP, False),
    (E.ENETUNREACH, True), (E.EHOSTDOWN, True), (E.ENONET, True), (E.ENETUNREACH, True),
    (E.EHOSTUNREACH, True), (E.ENETUNREACH, False), (E.EHOSTUNREACH, False),
    (E.EHOSTUNREACH, True), (E.EHOSTUNREACH, True), (E.EHOSTUNREACH, True),
)


def error_for(icmp_type: int, code: int) -> int | None:
    """The errno an ICMP error stands for (None: ignored)."""
    if icmp_type == ICMP_DEST_UNREACH:
        return ICMP_ERR_CONVERT[code][0] if code < len(ICMP_ERR_CONVERT) else None
    if icmp_type == ICMP_TIME_EXCEEDED:
        return E.EHOSTUNREACH
    if icmp_type == ICMP_PARAMETERPROB:
        return E.EPROTO
    return None


def exception_for(err: int) -> OSError:
    import os
    cls = {E.ECONNREFUSED: ConnectionRefusedError}.get(err, OSError)
    return cls(err, os.strerror(err))


def tcp_err(conn: "Connection", icmp_type: int, code: int, seq: int, info: int) -> None:
    """tcp_v4_err for a full connection."""
    from ustack.tcp import states as S
    from ustack.tcp.common import _after, _before
    host = conn.host
    if icmp_type == ICMP_SOURCE_QUENCH:
        return                      # ignored since RFC 6633
    if conn.state not in (S.LISTEN,) and (_before(seq, conn.snd_una) or
                                          _after(seq, conn.snd_nxt)):
        host.mib["TcpExtOutOfWindowIcmps"] += 1
        return
    if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
        if conn.state not in (S.LISTEN, S.CLOSED):
            mtu_reduced(conn, info)
        return
    err = error_for(icmp_type, code)
    if err is None:
        return
    if icmp_type == ICMP_DEST_UNREACH and code in (ICMP_NET_UNREACH, ICMP_HOST_UNREACH):
        conn.rto_revert(seq)        # RFC 6069
    if conn.state in (S.SYN_SENT, S.SYN_RECV) and conn.listener is None:
        host.mib["TcpAttemptFails"] += 1
        conn._destroy(exception_for(err))      # tcp_done_with_error
        conn._deliver()
        return
    conn.soft_error = err           # sk_err_soft: reported if the connection times out


def mtu_reduced(conn: "Connection", mtu: int) -> None:
    """tcp_v4_mtu_reduced -> tcp_sync_mss, then tcp_simple_retransmit."""
    mtu = max(min(mtu, conn.host.mtu), IP_MIN_PMTU)
    if mtu >= conn.pmtu:
        return
    conn.pmtu = mtu
    conn.mss = max(min(conn.peer_mss, conn.advmss, mtu - 40), 64)
    conn.simple_retransmit()


def req_err(host: Any, req: Any, icmp_type: int, code: int, seq: int) -> None:
    """tcp_req_err: an error quoting a request's SYN-ACK drops it (not for PMTU)."""
    from ustack.tcp.request import drop
    if seq != req.iss:
        host.mib["TcpExtOutOfWindowIcmps"] += 1
        return
    if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
        return
    drop(req)
    host.mib["TcpExtListenDrops"] += 1
