"""IPv4 and TCP on the wire at speed (ext/_segment.pyx); the reference is ustack.wire.reference.

Addresses are host-order ints (198.18.0.2 == 0xC6120002); seq/ack are ints 0..2**32-1.
Counters are a plain dict keyed by nstat names (ustack.counters); a missing name starts at 0.
"""
from collections.abc import Sequence
from typing import final

_Buffer = bytes | bytearray | memoryview

FIN: int  # 0x01
SYN: int  # 0x02
RST: int  # 0x04
PSH: int  # 0x08
ACK: int  # 0x10
URG: int  # 0x20
ECE: int  # 0x40
CWR: int  # 0x80

@final
class Ipv4:
    """An IPv4 header that passed ip_rcv_core()'s checks; made by parse_ipv4() only."""

    @property
    def src(self) -> int: ...
    @property
    def dst(self) -> int: ...
    @property
    def proto(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def ident(self) -> int: ...
    @property
    def tos(self) -> int: ...
    @property
    def df(self) -> bool: ...
    @property
    def mf(self) -> bool: ...
    @property
    def frag_offset(self) -> int:
        """In bytes."""
    @property
    def ihl(self) -> int:
        """Header length in bytes."""
    @property
    def total_length(self) -> int: ...
    @property
    def payload(self) -> bytes:
        """The transport part, trimmed to total_length (link padding dropped)."""
    @property
    def options(self) -> bytes:
        """The IPv4 option bytes, not interpreted."""

@final
class Segment:
    """A parsed TCP segment, or Segment(...): the one build_tcp() with the same arguments sends.

    Options are what tcp_parse_options() records, without its checks of SYN / connection
    state / sysctls (the core applies those): an MSS of 0 is ignored, a window shift above
    14 reads as 14, a later option of a kind overrides an earlier one.  Equality and hash
    compare every field below.
    """

    def __init__(self, src: int, dst: int, sport: int, dport: int, seq: int, ack: int,
                 flags: int, window: int, payload: _Buffer = b"", *, mss: int = -1,
                 wscale: int = -1, sack_ok: bool = False, ts_val: int | None = None,
                 ts_ecr: int = 0, sack_blocks: Sequence[tuple[int, int]] | None = None,
                 ttl: int = 64, urg_ptr: int = 0, tos: int = 0) -> None: ...
    @property
    def src(self) -> int: ...
    @property
    def dst(self) -> int: ...
    @property
    def sport(self) -> int: ...
    @property
    def dport(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def ack(self) -> int: ...
    @property
    def flags(self) -> int:
        """Byte 13 of the header: FIN..CWR."""
    @property
    def window(self) -> int:
        """As on the wire, unscaled."""
    @property
    def urg_ptr(self) -> int: ...
    @property
    def mss(self) -> int:
        """-1 if absent."""
    @property
    def wscale(self) -> int:
        """-1 if absent; at most 14."""
    @property
    def sack_ok(self) -> bool: ...
    @property
    def has_ts(self) -> bool: ...
    @property
    def aligned_ts(self) -> bool:
        """The options open with NOP, NOP, timestamp (the layout header prediction takes)."""
    @property
    def ts_val(self) -> int:
        """0 when absent."""
    @property
    def ts_ecr(self) -> int:
        """0 when absent."""
    @property
    def sack_blocks(self) -> tuple[tuple[int, int], ...]:
        """(start, end) pairs of the last well-formed SACK option; () if none."""
    @property
    def payload(self) -> bytes: ...
    @property
    def ttl(self) -> int: ...
    @property
    def tos(self) -> int:
        """The IPv4 tos byte (DSCP and ECN) the segment came in."""
    @property
    def data_offset(self) -> int:
        """Header length in bytes."""
    @property
    def seg_len(self) -> int:
        """len(payload) + 1 for SYN + 1 for FIN."""
    @property
    def end_seq(self) -> int:
        """(seq + seg_len) % 2**32."""
    @property
    def options(self) -> bytes:
        """The raw option area (for describe and debugging)."""
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

def parse_ipv4(data: bytes, counters: dict[str, int]) -> Ipv4 | None:
    """ip_rcv_core()'s checks and counters; None when Linux would drop; never raises.

    IpInReceives, IpExtInOctets always; IpExtIn{NoECT,ECT1,ECT0,CE}Pkts once version/ihl
    are sane; IpInHdrErrors (short, version, ihl, total_length < ihl, checksum);
    IpExtInCsumErrors too on a bad checksum; IpExtInTruncatedPkts if total_length > len.
    """

def parse_tcp(ip: Ipv4, counters: dict[str, int], verify_csum: bool = True) -> Segment | None:
    """tcp_v4_rcv()'s checks and counters; None when Linux would drop; never raises.

    TcpInSegs always; TcpInErrs for data offset < 5; TcpInCsumErrors + TcpInErrs for a bad
    checksum; nothing more for a segment shorter than 20 bytes or than its data offset.
    None without counting for a datagram that is not TCP or is a fragment.
    """

def parse(data: bytes, counters: dict[str, int]) -> Segment | None:
    """parse_ipv4() then parse_tcp(); None also for non-TCP and fragments."""

def build_tcp(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int,
              window: int, payload: _Buffer = b"", *, mss: int = -1, wscale: int = -1,
              sack_ok: bool = False, ts_val: int | None = None, ts_ecr: int = 0,
              sack_blocks: Sequence[tuple[int, int]] | None = None, ttl: int = 64,
              ident: int = 0, df: bool = True, urg_ptr: int = 0, tos: int = 0) -> bytes:
    """IPv4 + TCP with both checksums, options in tcp_options_write()'s layout.

    ValueError when a field is out of range or the options pass 40 bytes; OverflowError
    for an address, seq, ack or timestamp outside 0..2**32-1.
    """

def build_ipv4(src: int, dst: int, proto: int, payload: _Buffer, *, ttl: int = 64,
               ident: int = 0, df: bool = True, tos: int = 0) -> bytes: ...

def internet_checksum(data: _Buffer, initial: int = 0) -> int:
    """RFC 1071: ones'-complement sum of data's 16-bit words plus initial, folded, complemented."""
