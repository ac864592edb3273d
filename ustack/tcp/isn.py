"""Initial sequence numbers and timestamp offsets (RFC 6528; Linux secure_tcp_seq/secure_tcp_ts_off).

ISN = keyed hash of the 4-tuple + a clock that ticks every 64 ns, so a new incarnation of the
same 4-tuple normally starts above the old one.  The TSval offset is a keyed hash of the 4-tuple
(Linux 6.18), so a peer cannot read our uptime from TSval.
The core has no wall clock: the caller's `now` (milliseconds) drives both.
"""
from __future__ import annotations

import hashlib
import os


class SecretHash:
    """Keyed hashes for ISNs and TS offsets.  `secret` fixes them (tests); default is random."""

    __slots__ = ("_seq_key", "_ts_key", "_port_key", "_cookie_key")

    def __init__(self, secret: bytes | None = None) -> None:
        if secret is None:
            secret = os.urandom(32)
        self._seq_key = hashlib.blake2s(b"ustack-isn" + secret).digest()
        self._ts_key = hashlib.blake2s(b"ustack-tsoff" + secret).digest()
        self._port_key = hashlib.blake2s(b"ustack-port" + secret).digest()
        self._cookie_key = hashlib.blake2s(b"ustack-syncookie" + secret).digest()

    def isn(self, saddr: int, daddr: int, sport: int, dport: int, now_ms: int) -> int:
        h = hashlib.blake2s(
            saddr.to_bytes(4, "big") + daddr.to_bytes(4, "big")
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"),
            key=self._seq_key, digest_size=4).digest()
        # Linux adds ktime_get_real_ns() >> 6: 15625 ticks per millisecond.
        return (int.from_bytes(h, "big") + now_ms * 15625) & 0xFFFFFFFF

    def ts_offset(self, saddr: int, daddr: int, sport: int, dport: int) -> int:
        """Linux 6.18 secure_tcp_seq_and_ts_off: the offset is keyed by the whole 4-tuple
        (ports included again since "tcp: secure_seq: add back ports to TS offset"), so two
        connections between the same hosts do not share a TSval clock, while a new
        incarnation of one 4-tuple continues the old one's."""
        h = hashlib.blake2s(saddr.to_bytes(4, "big") + daddr.to_bytes(4, "big")
                            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"),
                            key=self._ts_key, digest_size=4).digest()
        return int.from_bytes(h, "big")

    def port_offset(self, saddr: int, daddr: int, dport: int) -> int:
        """Where connect()'s port search starts for a destination (Linux
        secure_ipv4_port_ephemeral): 64 keyed bits of (source, destination, destination port)."""
        h = hashlib.blake2s(saddr.to_bytes(4, "big") + daddr.to_bytes(4, "big")
                            + dport.to_bytes(2, "big"), key=self._port_key, digest_size=8).digest()
        return int.from_bytes(h, "big")

    def cookie_hash(self, saddr: int, daddr: int, sport: int, dport: int, count: int,
                    c: int) -> int:
        """Linux cookie_hash: a keyed 32-bit hash of the 4-tuple, the minute counter and which
        of the two hashes (c) a SYN cookie uses."""
        h = hashlib.blake2s(saddr.to_bytes(4, "big") + daddr.to_bytes(4, "big")
                            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
                            + (count & 0xFFFFFFFF).to_bytes(4, "big") + bytes((c,)),
                            key=self._cookie_key, digest_size=4).digest()
        return int.from_bytes(h, "big")
