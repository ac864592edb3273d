# cython: language_level=3
"""IPv4 and TCP on the wire at speed: parse and build one segment per call.

The readable statement of these formats is ustack/wire/reference.py (construct); the tests
hold this module to it.  Receive checks and counters follow Linux: ip_rcv_core()
(net/ipv4/ip_input.c), tcp_v4_rcv() (net/ipv4/tcp_ipv4.c) and tcp_parse_options()
(net/ipv4/tcp_input.c).  Options are written in the layout of tcp_options_write()
(net/ipv4/tcp_output.c).

Everything here reads through C pointers with bounds checks off: every index is checked
against the length by hand before it is read.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "arpa/inet.h" nogil:
    uint16_t ntohs(uint16_t)

# TCP flag bits (byte 13 of the header).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

cdef enum:
    _FIN = 0x01
    _SYN = 0x02
    _IPPROTO_TCP = 6
    _IP_DF = 0x4000
    _IP_MF = 0x2000
    _IP_OFFMASK = 0x1FFF
    _TCPOPT_EOL = 0
    _TCPOPT_NOP = 1
    _TCPOPT_MSS = 2
    _TCPOPT_WINDOW = 3
    _TCPOPT_SACK_PERM = 4
    _TCPOPT_SACK = 5
    _TCPOPT_TIMESTAMP = 8
    _TCP_MAX_WSCALE = 14          # RFC 7323 section 2.3
    _TCP_NUM_SACKS = 4
    _MAX_TCP_OPTION_SPACE = 40

# IpExt{InNoECT,InECT1,InECT0,InCE}Pkts indexed by the ECN field, as ip_rcv_core() counts them.
cdef tuple _ECN_COUNTERS = ("IpExtInNoECTPkts", "IpExtInECT1Pkts", "IpExtInECT0Pkts",
                            "IpExtInCEPkts")
cdef tuple _NO_SACK = ()


# --- byte order and checksums ---------------------------------------------------------------

cdef inline uint16_t _get16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _get32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _put16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void _put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint32_t _fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint32_t>s


cdef uint32_t _sum16(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """RFC 1071 ones'-complement sum of the big-endian 16-bit words of p[0:n] (an odd last
    byte padded with zero), folded to 16 bits, not complemented.

    The words are added in the machine's byte order, 32 bits at a time, and the folded sum
    is swapped once at the end: the ones'-complement sum commutes with byte swapping
    (RFC 1071 section 2(B))."""
    cdef uint64_t acc = 0
    cdef uint32_t w0, w1, w2, w3
    cdef uint8_t tail[4]
    cdef Py_ssize_t i = 0
    while i + 16 <= n:
        memcpy(&w0, p + i, 4)
        memcpy(&w1, p + i + 4, 4)
        memcpy(&w2, p + i + 8, 4)
        memcpy(&w3, p + i + 12, 4)
        acc += <uint64_t>w0 + w1 + w2 + w3
        i += 16
    while i + 4 <= n:
        memcpy(&w0, p + i, 4)
        acc += w0
        i += 4
    if i < n:
        tail[0] = tail[1] = tail[2] = tail[3] = 0
        memcpy(tail, p + i, n - i)
        memcpy(&w0, tail, 4)
        acc += w0
    return ntohs(<uint16_t>_fold(acc))


cdef inline uint32_t _pseudo_sum(uint32_t src, uint32_t dst, uint32_t length) noexcept nogil:
    # RFC 9293 section 3.1: source, destination, zero, protocol, TCP length.
    return ((src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
            + _IPPROTO_TCP + (length >> 16) + (length & 0xFFFF))


def internet_checksum(data, unsigned int initial=0):
    """RFC 1071 checksum of data (any bytes-like object): the ones'-complement sum of its
    16-bit words plus initial (e.g. a pseudo-header sum), folded and complemented."""
    cdef const uint8_t[::1] view
    cdef uint64_t s = initial
    if isinstance(data, bytes):
        s += _sum16(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    else:
        view = data
        if view.shape[0]:
            s += _sum16(&view[0], view.shape[0])
    return ~_fold(s) & 0xFFFF


# --- counters -----------------------------------------------------------------------------

cdef inline int _count(dict counters, str name, Py_ssize_t n=1) except -1:
    """counters[name] += n; a missing name starts at 0."""
    cdef PyObject* old = PyDict_GetItem(counters, name)
    if old is NULL:
        PyDict_SetItem(counters, name, n)
    else:
        PyDict_SetItem(counters, name, <object>old + n)
    return 0


# --- IPv4 ---------------------------------------------------------------------------------

@cython.freelist(32)
cdef class Ipv4:
    """An IPv4 header that passed ip_rcv_core()'s checks; made by parse_ipv4()."""

    cdef readonly uint32_t src, dst
    cdef readonly int proto, ttl, ident, tos, frag_offset, ihl, total_length
    cdef readonly bint df, mf
    cdef bytes _data          # the datagram as received (may carry link padding)

    def __init__(self):
        raise TypeError("Ipv4 objects are made by parse_ipv4()")

    @property
    def payload(self):
        """The transport part: after the header, up to total_length (link padding dropped)."""
        if self._data is None:
            return b""
        return self._data[self.ihl:self.total_length]

    @property
    def options(self):
        """The IPv4 option bytes (ihl > 20); not interpreted."""
        if self._data is None:
            return b""
        return self._data[20:self.ihl]

    def __repr__(self):
        return (f"Ipv4(src={_ip_str(self.src)}, dst={_ip_str(self.dst)}, proto={self.proto}, "
                f"ttl={self.ttl}, ident={self.ident}, tos={self.tos}, df={self.df}, "
                f"mf={self.mf}, frag_offset={self.frag_offset}, ihl={self.ihl}, "
                f"total_length={self.total_length})")


cdef str _ip_str(uint32_t a):
    return f"{a >> 24}.{(a >> 16) & 0xFF}.{(a >> 8) & 0xFF}.{a & 0xFF}"


cdef int _check_ipv4(const uint8_t* p, Py_ssize_t n, dict counters) except -2:
    """ip_rcv_core()'s checks in its order, with its counters: the header length in bytes,
    or -1 when the datagram is dropped."""
    cdef int ihl
    cdef Py_ssize_t total_length
    _count(counters, "IpInReceives")
    _count(counters, "IpExtInOctets", n)
    if n < 20:
        _count(counters, "IpInHdrErrors")
        return -1
    ihl = (p[0] & 0x0F) * 4
    if ihl < 20 or p[0] >> 4 != 4:
        _count(counters, "IpInHdrErrors")
        return -1
    _count(counters, <str>_ECN_COUNTERS[p[1] & 3])
    if ihl > n:
        _count(counters, "IpInHdrErrors")
        return -1
    if _sum16(p, ihl) != 0xFFFF:
        # RFC 1122 3.2.1.2: silently discard; Linux counts both.
        _count(counters, "IpExtInCsumErrors")
        _count(counters, "IpInHdrErrors")
        return -1
    total_length = _get16(p + 2)
    if total_length > n:
        _count(counters, "IpExtInTruncatedPkts")
        return -1
    if total_length < ihl:
        _count(counters, "IpInHdrErrors")
        return -1
    return ihl


def parse_ipv4(bytes data not None, dict counters not None):
    """Check an IPv4 datagram like ip_rcv_core() and count it like Linux.

    Returns an Ipv4, or None when Linux would drop it; never raises for any bytes.  Moves
    IpInReceives and IpExtInOctets always; IpExt{InNoECT,InECT1,InECT0,InCE}Pkts once the
    version and ihl are sane; IpInHdrErrors for a short datagram, a bad version, ihl or
    total length; IpExtInCsumErrors as well for a bad header checksum;
    IpExtInTruncatedPkts for a total length beyond the data.  IP options are not
    interpreted and fragments are returned as they are."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef int ihl = _check_ipv4(p, PyBytes_GET_SIZE(data), counters)
    if ihl < 0:
        return None
    cdef Ipv4 ip = Ipv4.__new__(Ipv4)
    cdef uint16_t frag = _get16(p + 6)
    ip.src = _get32(p + 12)
    ip.dst = _get32(p + 16)
    ip.proto = p[9]
    ip.ttl = p[8]
    ip.ident = _get16(p + 4)
    ip.tos = p[1]
    ip.df = (frag & _IP_DF) != 0
    ip.mf = (frag & _IP_MF) != 0
    ip.frag_offset = (frag & _IP_OFFMASK) * 8
    ip.ihl = ihl
    ip.total_length = _get16(p + 2)
    ip._data = data
    return ip


# --- TCP ----------------------------------------------------------------------------------

@cython.freelist(64)
cdef class Segment:
    """A TCP segment as received (parse(), parse_tcp()) or as meant to be sent (Segment(...)).

    Options hold what tcp_parse_options() records, without its state checks: Linux reads
    mss, wscale and sack_ok only on a SYN, and the timestamps and SACK blocks only when they
    were negotiated; the TCP core applies those rules.  An MSS of 0 is ignored, a window
    shift above 14 reads as 14, and a later option of a kind overrides an earlier one."""

    cdef readonly uint32_t src, dst, seq, ack, ts_val, ts_ecr
    cdef readonly int sport, dport, flags, window, urg_ptr, mss, wscale, ttl, tos, data_offset
    cdef readonly bint sack_ok, has_ts, aligned_ts
    cdef readonly tuple sack_blocks
    cdef readonly bytes payload
    cdef bytes _header        # the packet the header was read from; None if built here
    cdef Py_ssize_t _options_at

    def __init__(self, uint32_t src, uint32_t dst, int sport, int dport, uint32_t seq,
                 uint32_t ack, int flags, int window, payload=b"", *, int mss=-1,
                 int wscale=-1, bint sack_ok=False, ts_val=None, uint32_t ts_ecr=0,
                 sack_blocks=None, int ttl=64, int urg_ptr=0, int tos=0):
        """The segment build_tcp() with the same arguments would put on the wire."""
        cdef uint8_t opts[_MAX_TCP_OPTION_SPACE]
        cdef int optlen = _write_options(opts, mss, wscale, sack_ok, ts_val, ts_ecr,
                                         sack_blocks)
        _check_tcp_fields(sport, dport, flags, window, urg_ptr)
        if not (0 <= ttl <= 255 and 0 <= tos <= 255):
            raise ValueError("ttl and tos are 0..255")
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.seq, self.ack, self.flags, self.window, self.urg_ptr = seq, ack, flags, window, urg_ptr
        self.ttl, self.tos = ttl, tos
        self.payload = bytes(payload)
        self._header = PyBytes_FromStringAndSize(<char*>opts, optlen)
        self._options_at = 0
        self.data_offset = 20 + optlen
        _read_options(self, <const uint8_t*>opts, optlen)

    @property
    def seg_len(self):
        """Sequence space taken: payload bytes plus one for SYN and one for FIN."""
        return len(self.payload) + (self.flags & _SYN != 0) + (self.flags & _FIN != 0)

    @property
    def end_seq(self):
        """seq + seg_len modulo 2**32."""
        return (self.seq + len(self.payload) + (self.flags & _SYN != 0)
                + (self.flags & _FIN != 0)) & 0xFFFFFFFF

    @property
    def options(self):
        """The raw option area as it was on the wire (or as build_tcp() would write it)."""
        if self._header is None:
            return b""
        return self._header[self._options_at:self._options_at + self.data_offset - 20]

    cdef tuple _key(self):
        return (self.src, self.dst, self.sport, self.dport, self.seq, self.ack, self.flags,
                self.window, self.urg_ptr, self.mss, self.wscale, self.sack_ok, self.has_ts,
                self.ts_val, self.ts_ecr, self.sack_blocks, self.payload, self.ttl, self.tos,
                self.data_offset)

    def __eq__(self, other):
        if not isinstance(other, Segment):
            return NotImplemented
        return self._key() == (<Segment>other)._key()

    def __ne__(self, other):
        if not isinstance(other, Segment):
            return NotImplemented
        return self._key() != (<Segment>other)._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        from ustack.wire import describe
        return f"<Segment {describe(self, addresses=True)}>"


cdef int _check_tcp_fields(int sport, int dport, int flags, int window,
                           int urg_ptr) except -1:
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError("ports are 0..65535")
    if not (0 <= window <= 0xFFFF and 0 <= urg_ptr <= 0xFFFF):
        raise ValueError("window and urg_ptr are 0..65535 (the window is unscaled)")
    if not 0 <= flags <= 0xFF:
        raise ValueError("flags are 0..255")
    return 0


cdef int _read_options(Segment seg, const uint8_t* p, Py_ssize_t length) except -1:
    """tcp_parse_options() (net/ipv4/tcp_input.c) over the option area p[0:length]."""
    cdef Py_ssize_t i = 0, sack_at = -1
    cdef int kind, size, nblocks, b
    cdef uint16_t mss
    cdef tuple blocks
    seg.mss = -1
    seg.wscale = -1
    seg.sack_ok = False
    seg.has_ts = False
    seg.ts_val = 0
    seg.ts_ecr = 0
    # tcp_parse_aligned_timestamp: the option area opens with NOP NOP TS(10), the layout header
    # prediction expects (tcp_rcv_established's fast path takes no other)
    seg.aligned_ts = length >= 12 and p[0] == _TCPOPT_NOP and p[1] == _TCPOPT_NOP and \
        p[2] == _TCPOPT_TIMESTAMP and p[3] == 10
    while i < length:
        kind = p[i]
        if kind == _TCPOPT_EOL:
            break
        if kind == _TCPOPT_NOP:               # RFC 793 section 3.1
            i += 1
            continue
        if length - i < 2:
            break
        size = p[i + 1]
        if size < 2:                          # "silly options"
            break
        if size > length - i:                 # "don't parse partial options"
            break
        if kind == _TCPOPT_MSS:
            if size == 4:
                mss = _get16(p + i + 2)
                if mss:
                    seg.mss = mss
        elif kind == _TCPOPT_WINDOW:
            if size == 3:
                seg.wscale = p[i + 2] if p[i + 2] <= _TCP_MAX_WSCALE else _TCP_MAX_WSCALE
        elif kind == _TCPOPT_SACK_PERM:
            if size == 2:
                seg.sack_ok = True
        elif kind == _TCPOPT_SACK:
            if size >= 10 and (size - 2) % 8 == 0:
                sack_at = i                   # Linux keeps the last one (TCP_SKB_CB->sacked)
        elif kind == _TCPOPT_TIMESTAMP:
            if size == 10:
                seg.has_ts = True
                seg.ts_val = _get32(p + i + 2)
                seg.ts_ecr = _get32(p + i + 6)
        i += size
    if sack_at < 0:
        seg.sack_blocks = _NO_SACK
        return 0
    nblocks = (p[sack_at + 1] - 2) // 8
    if nblocks > _TCP_NUM_SACKS:
        nblocks = _TCP_NUM_SACKS
    blocks = PyTuple_New(nblocks)
    for b in range(nblocks):
        block = (_get32(p + sack_at + 2 + 8 * b), _get32(p + sack_at + 6 + 8 * b))
        Py_INCREF(block)
        PyTuple_SET_ITEM(blocks, b, block)
    seg.sack_blocks = blocks
    return 0


cdef object _parse_tcp_at(bytes data, Py_ssize_t off, Py_ssize_t end, uint32_t src,
                          uint32_t dst, int ttl, int tos, dict counters,
                          bint verify_csum=True):
    """tcp_v4_rcv()'s checks and counters on data[off:end], then the segment."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data) + off
    cdef Py_ssize_t n = end - off
    cdef int doff
    _count(counters, "TcpInSegs")             # "Count it even if it's bad"
    if n < 20:
        return None                           # discard_it, no error counted
    doff = (p[12] >> 4) * 4
    if doff < 20:
        _count(counters, "TcpInErrs")
        return None
    if doff > n:
        return None                           # discard_it, no error counted
    if verify_csum and _fold(<uint64_t>_sum16(p, n) + _pseudo_sum(src, dst, <uint32_t>n)) \
            != 0xFFFF:
        _count(counters, "TcpInCsumErrors")
        _count(counters, "TcpInErrs")
        return None
    cdef Segment seg = Segment.__new__(Segment)
    seg.src = src
    seg.dst = dst
    seg.sport = _get16(p)
    seg.dport = _get16(p + 2)
    seg.seq = _get32(p + 4)
    seg.ack = _get32(p + 8)
    seg.flags = p[13]
    seg.window = _get16(p + 14)
    seg.urg_ptr = _get16(p + 18)
    seg.ttl = ttl
    seg.tos = tos
    seg.data_offset = doff
    seg._header = data
    seg._options_at = off + 20
    _read_options(seg, p + 20, doff - 20)
    seg.payload = PyBytes_FromStringAndSize(<const char*>p + doff, n - doff)
    return seg


def parse_tcp(Ipv4 ip not None, dict counters not None, bint verify_csum=True):
    """Check the TCP segment in an IPv4 datagram like tcp_v4_rcv() and count it like Linux.

    Returns a Segment, or None when Linux would drop it; never raises.  Moves TcpInSegs
    always (Linux: "count it even if it's bad"); TcpInErrs for a data offset under 5;
    TcpInCsumErrors and TcpInErrs for a bad checksum.  A segment shorter than 20 bytes or
    than its data offset is dropped with no error counted, as Linux does.  A datagram that
    is not TCP or is a fragment gives None and counts nothing.  ``verify_csum=False``: the
    link says the checksum is partial (a TUN device with checksum offload hands over the
    kernel's own packets with CHECKSUM_PARTIAL: only the pseudo-header sum is there)."""
    if ip._data is None or ip.proto != _IPPROTO_TCP or ip.mf or ip.frag_offset:
        return None
    return _parse_tcp_at(ip._data, ip.ihl, ip.total_length, ip.src, ip.dst, ip.ttl, ip.tos,
                         counters, verify_csum)


def parse(bytes data not None, dict counters not None):
    """parse_ipv4() then parse_tcp(): a Segment, or None (dropped, not TCP, or a fragment:
    there is no reassembly)."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef int ihl = _check_ipv4(p, PyBytes_GET_SIZE(data), counters)
    if ihl < 0 or p[9] != _IPPROTO_TCP or _get16(p + 6) & (_IP_MF | _IP_OFFMASK):
        return None
    return _parse_tcp_at(data, ihl, _get16(p + 2), _get32(p + 12), _get32(p + 16), p[8],
                         p[1], counters)


# --- building -----------------------------------------------------------------------------

cdef int _write_options(uint8_t* o, int mss, int wscale, bint sack_ok, ts_val,
                        uint32_t ts_ecr, sack_blocks) except -1:
    """Write the options into o (room for 40 bytes) in the order and padding of
    tcp_options_write(); returns their length, a multiple of 4."""
    cdef bint has_ts = ts_val is not None
    cdef uint32_t tsv = ts_val if has_ts else 0
    cdef Py_ssize_t nblocks = 0 if sack_blocks is None else len(sack_blocks)
    cdef uint32_t starts[_TCP_NUM_SACKS]
    cdef uint32_t ends[_TCP_NUM_SACKS]
    cdef int n = 0, b
    if not -1 <= mss <= 0xFFFF:
        raise ValueError("mss is -1 (none) or 0..65535")
    if not -1 <= wscale <= 0xFF:
        raise ValueError("wscale is -1 (none) or 0..255")
    if nblocks > _TCP_NUM_SACKS:
        raise ValueError("at most 4 SACK blocks")
    if ((4 if mss != -1 else 0) + (12 if has_ts else 0) + (4 if sack_ok and not has_ts else 0)
            + (4 if wscale != -1 else 0) + (4 + 8 * nblocks if nblocks else 0)
            > _MAX_TCP_OPTION_SPACE):
        raise ValueError("the options do not fit in 40 bytes")
    for b in range(nblocks):
        starts[b], ends[b] = sack_blocks[b]
    if mss != -1:
        o[0] = _TCPOPT_MSS
        o[1] = 4
        _put16(o + 2, mss)
        n = 4
    if has_ts:
        if sack_ok:                           # SACK-permitted shares the timestamps' word
            o[n] = _TCPOPT_SACK_PERM
            o[n + 1] = 2
        else:
            o[n] = o[n + 1] = _TCPOPT_NOP
        o[n + 2] = _TCPOPT_TIMESTAMP
        o[n + 3] = 10
        _put32(o + n + 4, tsv)
        _put32(o + n + 8, ts_ecr)
        n += 12
    elif sack_ok:
        o[n] = o[n + 1] = _TCPOPT_NOP
        o[n + 2] = _TCPOPT_SACK_PERM
        o[n + 3] = 2
        n += 4
    if wscale != -1:
        o[n] = _TCPOPT_NOP
        o[n + 1] = _TCPOPT_WINDOW
        o[n + 2] = 3
        o[n + 3] = wscale
        n += 4
    if nblocks:
        o[n] = o[n + 1] = _TCPOPT_NOP
        o[n + 2] = _TCPOPT_SACK
        o[n + 3] = 2 + 8 * nblocks
        n += 4
        for b in range(nblocks):
            _put32(o + n, starts[b])
            _put32(o + n + 4, ends[b])
            n += 8
    return n


cdef inline void _write_ipv4_header(uint8_t* h, uint32_t src, uint32_t dst, int proto,
                                    Py_ssize_t total_length, int ttl, int ident, bint df,
                                    int tos) noexcept nogil:
    h[0] = 0x45
    h[1] = tos
    _put16(h + 2, <uint16_t>total_length)
    _put16(h + 4, ident)
    _put16(h + 6, _IP_DF if df else 0)
    h[8] = ttl
    h[9] = proto
    h[10] = h[11] = 0
    _put32(h + 12, src)
    _put32(h + 16, dst)
    _put16(h + 10, ~_sum16(h, 20) & 0xFFFF)


cdef int _check_ip_fields(int ttl, int ident, int tos) except -1:
    if not (0 <= ttl <= 255 and 0 <= tos <= 255):
        raise ValueError("ttl and tos are 0..255")
    if not 0 <= ident <= 0xFFFF:
        raise ValueError("ident is 0..65535")
    return 0


def build_tcp(uint32_t src, uint32_t dst, int sport, int dport, uint32_t seq, uint32_t ack,
              int flags, int window, payload=b"", *, int mss=-1, int wscale=-1,
              bint sack_ok=False, ts_val=None, uint32_t ts_ecr=0, sack_blocks=None,
              int ttl=64, int ident=0, bint df=True, int urg_ptr=0, int tos=0):
    """An IPv4 datagram carrying one TCP segment, both checksums filled in.

    payload is any bytes-like object.  Options are written in tcp_options_write()'s layout:
    MSS (mss != -1); timestamps (ts_val not None) behind "04 02" when sack_ok, else behind
    two NOPs; SACK-permitted alone as "01 01 04 02"; the window shift as "01 03 03 ws";
    SACK blocks as "01 01 05 len ...".  ValueError when a field is out of range or the
    options pass 40 bytes."""
    cdef uint8_t opts[_MAX_TCP_OPTION_SPACE]
    cdef const uint8_t[::1] view
    cdef const uint8_t* data = NULL
    cdef Py_ssize_t plen = 0
    cdef int optlen = _write_options(opts, mss, wscale, sack_ok, ts_val, ts_ecr, sack_blocks)
    _check_tcp_fields(sport, dport, flags, window, urg_ptr)
    _check_ip_fields(ttl, ident, tos)
    if isinstance(payload, bytes):
        data = <const uint8_t*>PyBytes_AS_STRING(payload)
        plen = PyBytes_GET_SIZE(payload)
    else:
        view = payload
        plen = view.shape[0]
        if plen:
            data = &view[0]
    cdef Py_ssize_t tcp_len = 20 + optlen + plen
    if 20 + tcp_len > 0xFFFF:
        raise ValueError("the datagram would pass 65535 bytes")
    out = PyBytes_FromStringAndSize(NULL, 20 + tcp_len)
    cdef uint8_t* h = <uint8_t*>PyBytes_AS_STRING(out)
    cdef uint8_t* t = h + 20
    _write_ipv4_header(h, src, dst, _IPPROTO_TCP, 20 + tcp_len, ttl, ident, df, tos)
    _put16(t, sport)
    _put16(t + 2, dport)
    _put32(t + 4, seq)
    _put32(t + 8, ack)
    t[12] = ((20 + optlen) // 4) << 4
    t[13] = flags
    _put16(t + 14, window)
    t[16] = t[17] = 0
    _put16(t + 18, urg_ptr)
    if optlen:
        memcpy(t + 20, opts, optlen)
    if plen:
        memcpy(t + 20 + optlen, data, plen)
    _put16(t + 16, ~_fold(<uint64_t>_sum16(t, tcp_len)
                          + _pseudo_sum(src, dst, <uint32_t>tcp_len)) & 0xFFFF)
    return out


def build_ipv4(uint32_t src, uint32_t dst, int proto, payload, *, int ttl=64, int ident=0,
               bint df=True, int tos=0):
    """An IPv4 datagram (no options, not fragmented) around payload (any bytes-like)."""
    cdef const uint8_t[::1] view
    cdef const uint8_t* data = NULL
    cdef Py_ssize_t plen = 0
    _check_ip_fields(ttl, ident, tos)
    if not 0 <= proto <= 255:
        raise ValueError("proto is 0..255")
    if isinstance(payload, bytes):
        data = <const uint8_t*>PyBytes_AS_STRING(payload)
        plen = PyBytes_GET_SIZE(payload)
    else:
        view = payload
        plen = view.shape[0]
        if plen:
            data = &view[0]
    if 20 + plen > 0xFFFF:
        raise ValueError("the datagram would pass 65535 bytes")
    out = PyBytes_FromStringAndSize(NULL, 20 + plen)
    cdef uint8_t* h = <uint8_t*>PyBytes_AS_STRING(out)
    _write_ipv4_header(h, src, dst, proto, 20 + plen, ttl, ident, df, tos)
    if plen:
        memcpy(h + 20, data, plen)
    return out
