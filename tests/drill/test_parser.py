"""Tests of the packetdrill script front end (ustack.drill.parser / ustack.drill.ast)."""
from __future__ import annotations

import pathlib

import pytest

from ustack.drill import KSFT_IPV4_DEFINES, DrillSyntaxError, parse_file, parse_script
from ustack.drill.ast import (
    INBOUND, OUTBOUND, TH_ACK, TH_AE, TH_CWR, TH_ECE, TH_PSH, TH_SYN, Array, Assign, BitOr,
    Call, CodeBlock, DeviceSetup, EllipsisExpr, Event, EventTime, IcmpEchoed, IcmpPacket,
    Int, IpInfo, OptEol, OptFastOpen, OptMd5, OptMss, OptNop, OptSack, OptSackOk,
    OptTimestamp, OptUnknown, OptWscale, RunScript, ShellBlock, ShellOther, String, Struct,
    Symbol, Syscall, SysctlSet, TcpPacket, TimeKind, UdpPacket, Unsupported,
)
from ustack.drill.parser import parse_shell, tokenize

SAMPLES = pathlib.Path(__file__).parent / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.pkt"))


def one(line: str, **kw) -> Event:
    """Parse a one-event script and return its event."""
    script = parse_script(line + "\n", "t.pkt", **kw)
    assert len(script.events) == 1, script.events
    return script.events[0]


def action(line: str, **kw):
    return one(line, **kw).action


# --------------------------------------------------------------------------- samples


def test_at_least_fifteen_samples():
    assert len(SAMPLE_FILES) >= 15


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_sample_parses(path: pathlib.Path):
    script = parse_file(path, defines=KSFT_IPV4_DEFINES)
    assert script.events
    assert script.warnings == ()
    assert script.init_command is not None
    assert any(isinstance(c, RunScript) and c.path == "./defaults.sh"
               for c in script.init_command.commands)
    # every event carries its line, and its text starts on that line
    lines = path.read_text().splitlines()
    for ev in script.events:
        assert ev.line >= 1
        assert lines[ev.line - 1].strip().startswith(ev.text.splitlines()[0].strip())
    # samples use only what ustack models, except the ICMP one
    unsupported = script.unsupported()
    if path.name == "icmp_frag_needed.pkt":
        assert [w for _, w in unsupported] == ["IcmpPacket"]
    else:
        assert unsupported == []


def test_sample_time_wait_reuse_structure():
    s = parse_file(SAMPLES / "time_wait_reuse.pkt")
    pkts = [e.action for e in s.events if isinstance(e.action, TcpPacket)]
    syns = [p for p in pkts if p.flags == "S"]
    assert [p.seq for p in syns] == [0, 1000]
    synack2 = [p for p in pkts if p.flags == "S."][1]
    assert (synack2.seq, synack2.ack) == (65539, 1001)


def test_sample_connect_refused_cleanup():
    s = parse_file(SAMPLES / "connect_refused.pkt")
    assert s.cleanup_command is not None
    assert s.cleanup_command.commands == (
        RunScript("/tmp/sysctl_restore_${PPID}.sh", "/tmp/sysctl_restore_${PPID}.sh", ()),)
    assert s.init_command.commands[1] == SysctlSet(
        "./set_sysctls.py /proc/sys/net/ipv4/tcp_timestamps=0", "net.ipv4.tcp_timestamps", "0")
    assert s.init_command.commands[1].line == s.init_command.line + 1


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize("text,expected", [
    ("0 close(4) = 0", EventTime(TimeKind.ABSOLUTE, 0)),
    ("0.100 close(4) = 0", EventTime(TimeKind.ABSOLUTE, 100_000)),
    ("2 close(4) = 0", EventTime(TimeKind.ABSOLUTE, 2_000_000)),
    ("+0 close(4) = 0", EventTime(TimeKind.RELATIVE, 0)),
    ("+.1 close(4) = 0", EventTime(TimeKind.RELATIVE, 100_000)),
    ("+0.035 close(4) = 0", EventTime(TimeKind.RELATIVE, 35_000)),
    ("+3.250 close(4) = 0", EventTime(TimeKind.RELATIVE, 3_250_000)),
    ("0.1~0.2 > . 1:1(0) ack 1", EventTime(TimeKind.ABSOLUTE_RANGE, 100_000, 200_000)),
    ("+0~+0.1 > . 1:1(0) ack 1", EventTime(TimeKind.RELATIVE_RANGE, 0, 100_000)),
    ("* > . 1:1(0) ack 1", EventTime(TimeKind.ANY)),
])
def test_event_times(text, expected):
    assert one(text).time == expected


def test_blocking_syscall_end_time():
    ev = one("+0...0.100 read(4, ..., 2000) = 2000")
    assert ev.time == EventTime(TimeKind.RELATIVE, 0)
    assert ev.action == Syscall("read", (Int(4), EllipsisExpr(), Int(2000)), Int(2000),
                                end_us=100_000)
    assert ev.action.blocking
    ev = one("+.1...0.200 connect(3, ..., ...) = 0")
    assert (ev.time.start_us, ev.action.end_us) == (100_000, 200_000)
    # spaces around the ellipsis, and an integer end time
    assert one("+.002 ... 0.004 connect(4, ..., ...) = 0").action.end_us == 4_000
    assert one("+0...0 connect(4, ..., ...) = 0").action.end_us == 0


@pytest.mark.parametrize("text,msg", [
    ("* close(4) = 0", "event time <star> can only be used with outbound packets"),
    ("0.1~0.2 close(4) = 0", "event time range can only be used with outbound packets"),
    ("+0~+1 < . 1:1(0) ack 1 win 1", "event time range can only be used with outbound"),
    ("0.2~0.1 > . 1:1(0) ack 1", "time range is backwards"),
    ("-1 close(4) = 0", "negative time"),
    ("+0~0.1 > . 1:1(0) ack 1", "expected '+'"),
])
def test_time_errors(text, msg):
    with pytest.raises(DrillSyntaxError) as ei:
        parse_script("// a comment\n" + text + "\n", "t.pkt")
    assert str(ei.value).startswith("t.pkt:2: ")
    assert msg in str(ei.value)


# --------------------------------------------------------------------------- syscalls


@pytest.mark.parametrize("text,expected", [
    ("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3",
     Syscall("socket", (EllipsisExpr(), Symbol("SOCK_STREAM"), Symbol("IPPROTO_TCP")), Int(3))),
    ("0 socket(..., SOCK_STREAM|SOCK_NONBLOCK, IPPROTO_TCP) = 3",
     Syscall("socket", (EllipsisExpr(), BitOr((Symbol("SOCK_STREAM"), Symbol("SOCK_NONBLOCK"))),
                        Symbol("IPPROTO_TCP")), Int(3))),
    ("+0 bind(3, ..., ...) = 0",
     Syscall("bind", (Int(3), EllipsisExpr(), EllipsisExpr()), Int(0))),
    ("+0 listen(3, 1) = 0", Syscall("listen", (Int(3), Int(1)), Int(0))),
    ("+0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0",
     Syscall("setsockopt", (Int(3), Symbol("SOL_SOCKET"), Symbol("SO_REUSEADDR"),
                            Array((Int(1),)), Int(4)), Int(0))),
    ("+0 setsockopt(4, SOL_SOCKET, SO_LINGER, {onoff=1, linger=0}, 8) = 0",
     Syscall("setsockopt", (Int(4), Symbol("SOL_SOCKET"), Symbol("SO_LINGER"),
                            Struct((Assign("onoff", Int(1)), Assign("linger", Int(0)))),
                            Int(8)), Int(0))),
    ("+0 getsockopt(3, SOL_SOCKET, SO_ERROR, [ECONNREFUSED], [4]) = 0",
     Syscall("getsockopt", (Int(3), Symbol("SOL_SOCKET"), Symbol("SO_ERROR"),
                            Array((Symbol("ECONNREFUSED"),)), Array((Int(4),))), Int(0))),
    ("+0 fcntl(3, F_SETFL, O_RDWR|O_NONBLOCK) = 0",
     Syscall("fcntl", (Int(3), Symbol("F_SETFL"),
                       BitOr((Symbol("O_RDWR"), Symbol("O_NONBLOCK")))), Int(0))),
    ("+0 fcntl(3, F_GETFL) = 0x2 (flags O_RDWR)",
     Syscall("fcntl", (Int(3), Symbol("F_GETFL")), Int(2, hex=True), note="flags O_RDWR")),
    ("+0 ioctl(4, SIOCINQ, [1000]) = 0",
     Syscall("ioctl", (Int(4), Symbol("SIOCINQ"), Array((Int(1000),))), Int(0))),
    ("+0 poll([{fd=4, events=POLLIN, revents=POLLIN}], 1, 0) = 1",
     Syscall("poll", (Array((Struct((Assign("fd", Int(4)), Assign("events", Symbol("POLLIN")),
                                     Assign("revents", Symbol("POLLIN")))),)),
                      Int(1), Int(0)), Int(1))),
    ("+0 connect(3, ..., ...) = -1 EINPROGRESS (Operation now in progress)",
     Syscall("connect", (Int(3), EllipsisExpr(), EllipsisExpr()), Int(-1),
             errno="EINPROGRESS", note="Operation now in progress")),
    ("+0 connect(4, AF_UNSPEC, ...) = 0",
     Syscall("connect", (Int(4), Symbol("AF_UNSPEC"), EllipsisExpr()), Int(0))),
    ("+0 accept(3, ..., ...) = 4",
     Syscall("accept", (Int(3), EllipsisExpr(), EllipsisExpr()), Int(4))),
    ("+0 write(4, ..., 1000) = 1000",
     Syscall("write", (Int(4), EllipsisExpr(), Int(1000)), Int(1000))),
    ("+0 read(4, ..., 1000) = 1000",
     Syscall("read", (Int(4), EllipsisExpr(), Int(1000)), Int(1000))),
    ("+0 recv(4, ..., 1000, 0) = 1000",
     Syscall("recv", (Int(4), EllipsisExpr(), Int(1000), Int(0)), Int(1000))),
    ("+0 send(4, ..., 4000, MSG_ZEROCOPY) = 4000",
     Syscall("send", (Int(4), EllipsisExpr(), Int(4000), Symbol("MSG_ZEROCOPY")), Int(4000))),
    ("+0 sendto(4, NULL, 1, MSG_FASTOPEN, ..., ...) = -1",
     Syscall("sendto", (Int(4), Symbol("NULL"), Int(1), Symbol("MSG_FASTOPEN"),
                        EllipsisExpr(), EllipsisExpr()), Int(-1))),
    ("+0 close(4) = 0", Syscall("close", (Int(4),), Int(0))),
    ("+0 shutdown(4, SHUT_WR) = 0", Syscall("shutdown", (Int(4), Symbol("SHUT_WR")), Int(0))),
    ("+0 write(4, ..., 100) = -1 EPIPE (Broken Pipe)",
     Syscall("write", (Int(4), EllipsisExpr(), Int(100)), Int(-1), errno="EPIPE",
             note="Broken Pipe")),
    ('+0 setsockopt(3, SOL_TCP, TCP_FASTOPEN_KEY, "", 0) = -1 (Invalid Argument)',
     Syscall("setsockopt", (Int(3), Symbol("SOL_TCP"), Symbol("TCP_FASTOPEN_KEY"), String(""),
                            Int(0)), Int(-1), note="Invalid Argument")),
    ('+0 setsockopt(3, SOL_TCP, TCP_CONGESTION, "cubic", 5) = 0',
     Syscall("setsockopt", (Int(3), Symbol("SOL_TCP"), Symbol("TCP_CONGESTION"),
                            String("cubic"), Int(5)), Int(0))),
    ("+0 setsockopt(4, SOL_TCP, TCP_NOTSENT_LOWAT, [0xffffffff], 4) = 0",
     Syscall("setsockopt", (Int(4), Symbol("SOL_TCP"), Symbol("TCP_NOTSENT_LOWAT"),
                            Array((Int(0xFFFFFFFF, hex=True),)), Int(4)), Int(0))),
    ("+0 epoll_ctl(5, EPOLL_CTL_ADD, 4, {events=EPOLLOUT|EPOLLET, fd=4}) = 0",
     Syscall("epoll_ctl", (Int(5), Symbol("EPOLL_CTL_ADD"), Int(4),
                           Struct((Assign("events", BitOr((Symbol("EPOLLOUT"),
                                                           Symbol("EPOLLET")))),
                                   Assign("fd", Int(4))))), Int(0))),
    ("+0 writev(4, [{..., 10}, {..., 20}], 2) = 30",
     Syscall("writev", (Int(4), Array((Struct((EllipsisExpr(), Int(10))),
                                       Struct((EllipsisExpr(), Int(20))))), Int(2)), Int(30))),
    ("+0 getpid() = ...", Syscall("getpid", None, EllipsisExpr())),
    ('+0 bind(3, {sa_family=AF_INET, sin_port=htons(8080), '
     'sin_addr=inet_addr("192.0.2.1")}, 16) = 0',
     Syscall("bind", (Int(3), Struct((Assign("sa_family", Symbol("AF_INET")),
                                      Assign("sin_port", Call("htons", (Int(8080),))),
                                      Assign("sin_addr", Call("inet_addr",
                                                              (String("192.0.2.1"),))))),
                      Int(16)), Int(0))),
])
def test_syscalls(text, expected):
    assert action(text) == expected


def test_multiline_msghdr():
    script = parse_script(
        "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
        "   +0\trecvmsg(3, {msg_name(...)=...,\n"
        "\t\t    msg_iov(1)=[{..., 1000}],\n"
        "\t\t    msg_flags=0,\n"
        "\t\t    msg_control=[{cmsg_level=SOL_TCP,\n"
        "\t\t\t\t  cmsg_type=TCP_CM_INQ,\n"
        "\t\t\t\t  cmsg_data=9000}]}, 0) = 1000\n"
        "+0 close(3) = 0\n", "t.pkt")
    ev = script.events[1]
    assert ev.line == 2
    assert script.events[2].line == 8
    msg = ev.action.args[1]
    assert msg == Struct((
        Assign("msg_name", EllipsisExpr(), EllipsisExpr()),
        Assign("msg_iov", Array((Struct((EllipsisExpr(), Int(1000))),)), Int(1)),
        Assign("msg_flags", Int(0)),
        Assign("msg_control", Array((Struct((
            Assign("cmsg_level", Symbol("SOL_TCP")),
            Assign("cmsg_type", Symbol("TCP_CM_INQ")),
            Assign("cmsg_data", Int(9000)))),))),
    ))
    assert msg.fields["msg_flags"] == Int(0)
    assert msg.items[1].line == 3


def test_string_escapes_and_ellipsis():
    a = action('+0 setsockopt(3, SOL_TCP, TCP_FASTOPEN_KEY,\n'
               '   "\\xa1\\xa1\\xb2\\x00\\n", 16) = 0')
    s = a.args[3]
    assert isinstance(s, String)
    assert s.data == b"\xa1\xa1\xb2\x00\n"
    assert action('+0 write(4, "abc"..., 3) = 3').args[1] == String("abc", ellipsis=True)


def test_unknown_syscall_is_a_node():
    ev = one("+0 frobnicate(3, 1) = 0")
    assert ev.action == Syscall("frobnicate", (Int(3), Int(1)), Int(0))
    assert not ev.action.known
    assert action("+0 close(3) = 0").known


def test_underscore_symbol():
    a = action("+0 getsockopt(3, SOL_TCP, TCP_INFO, [_], [4]) = 0")
    assert a.args[3] == Array((Symbol("_"),))
    assert a.args[3].items[0].is_wildcard


# --------------------------------------------------------------------------- packets


@pytest.mark.parametrize("text,expected", [
    ("+0 < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>",
     TcpPacket(INBOUND, "S", 0, 0, None, 32792, None,
               (OptMss(1000), OptSackOk(), OptNop(), OptNop(), OptNop(), OptWscale(7)))),
    ("+0 > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>",
     TcpPacket(OUTBOUND, "S.", 0, 0, 1, None, None,
               (OptMss(1460), OptNop(), OptNop(), OptSackOk(), OptNop(), OptWscale(8)))),
    ("+0 < . 1:1(0) ack 1 win 257", TcpPacket(INBOUND, ".", 1, 0, 1, 257)),
    ("+0 > P. 1:1001(1000) ack 1", TcpPacket(OUTBOUND, "P.", 1, 1000, 1)),
    ("+0 < F. 1:1(0) ack 1 win 257", TcpPacket(INBOUND, "F.", 1, 0, 1, 257)),
    ("+0 < R. 1:1(0) ack 1 win 0", TcpPacket(INBOUND, "R.", 1, 0, 1, 0)),
    ("+0 > R 2:2(0)", TcpPacket(OUTBOUND, "R", 2, 0)),
    ("+0 > - 1:1(0)", TcpPacket(OUTBOUND, "", 1, 0)),
    ("+0 < P.U 1:11(10) ack 1 win 257 urg 5",
     TcpPacket(INBOUND, "P.U", 1, 10, 1, 257, 5)),
    ("+0 > S. 0:0(0) ack 1 <...>", TcpPacket(OUTBOUND, "S.", 0, 0, 1, options=None)),
    ("+0 > S 0:0(0) <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 8>",
     TcpPacket(OUTBOUND, "S", 0, 0, options=(
         OptMss(1460), OptSackOk(), OptTimestamp(100, 0), OptNop(), OptWscale(8)))),
    ("+0 > . 1:1(0) ack 1 <nop,nop,sack 7001:8001 4001:5001 1001:3001>",
     TcpPacket(OUTBOUND, ".", 1, 0, 1, options=(
         OptNop(), OptNop(), OptSack(((7001, 8001), (4001, 5001), (1001, 3001)))))),
    ("+0 > . 1:1(0) ack 1 <nop, nop, sack 1001:2001>",
     TcpPacket(OUTBOUND, ".", 1, 0, 1, options=(OptNop(), OptNop(),
                                                 OptSack(((1001, 2001),))))),
    ("+0 < S 0:10(10) win 32792 <mss 1460,FO 0102030405060708,eol>",
     TcpPacket(INBOUND, "S", 0, 10, None, 32792, None, (
         OptMss(1460), OptFastOpen(bytes(range(1, 9))), OptEol()))),
    ("+0 > S 0:0(0) <FO,nop,nop,FOEXP abcd1234,wscale *>",
     TcpPacket(OUTBOUND, "S", 0, 0, options=(
         OptFastOpen(), OptNop(), OptNop(), OptFastOpen(b"\xab\xcd\x12\x34", True),
         OptWscale(None)))),
    ("+0 < . 1:1(0) ack 1 win 514 <md5 000102030405060708090a0b0c0d0e0f,nop,nop>",
     TcpPacket(INBOUND, ".", 1, 0, 1, 514, None, (
         OptMd5(bytes(range(16))), OptNop(), OptNop()))),
    ("+0 > [ect0] P. 1:1001(1000) ack 1",
     TcpPacket(OUTBOUND, "P.", 1, 1000, 1, ip=IpInfo(ecn="ect0"))),
    ("+0 < (tos 0x10) . 1:1(0) ack 1 win 10",
     TcpPacket(INBOUND, ".", 1, 0, 1, 10, ip=IpInfo(tos=0x10))),
    ("+0 > [ect01, flowlabel 0x12345] . 1:1(0) ack 1",
     TcpPacket(OUTBOUND, ".", 1, 0, 1, ip=IpInfo(ecn="ect01", flowlabel=0x12345))),
    ("+0 > [ttl 64] . 1:1(0) ack 1",
     TcpPacket(OUTBOUND, ".", 1, 0, 1, ip=IpInfo(ttl=64))),
    ("+0 < 1234>8080 S 0:0(0) win 100",
     TcpPacket(INBOUND, "S", 0, 0, None, 100, sport=1234, dport=8080)),
    ("+0 < SEWA 0:0(0) win 32792", TcpPacket(INBOUND, "SEWA", 0, 0, None, 32792)),
    ("+0 > 5. 1:1(0) ack 1", TcpPacket(OUTBOUND, "5.", 1, 0, 1)),
])
def test_tcp_packets(text, expected):
    assert action(text) == expected


def test_tcp_flag_bits():
    assert action("+0 > S. 0:0(0) ack 1").flag_bits == TH_SYN | TH_ACK
    assert action("+0 < SEWA 0:0(0) win 1").flag_bits == TH_SYN | TH_ECE | TH_CWR | TH_AE
    p = action("+0 > 5. 1:1(0) ack 1")
    assert p.ace == 5 and p.flag_bits == TH_ACK | TH_ECE | TH_AE
    assert action("+0 > P. 1:2(1) ack 1").flag_bits == TH_PSH | TH_ACK


def test_unknown_tcp_option_kept():
    p = action("+.002 > SW. 0:0(0) ack 1 <mss 1460,ECN e1b 1 ceb 0 e0b 1,nop,wscale 8>")
    assert p.options == (OptMss(1460), OptUnknown("ECN", "ECN e1b 1 ceb 0 e0b 1"), OptNop(),
                         OptWscale(8))


def test_udp_and_icmp():
    assert action("+0 < udp (1000)") == UdpPacket(INBOUND, 1000)
    assert action("+0 > udp 5000>6000 (20)") == UdpPacket(OUTBOUND, 20, None, 5000, 6000)
    assert action("+0 < icmp unreachable frag_needed mtu 1200 [1:1461(1460)]") == \
        IcmpPacket(INBOUND, "unreachable", "frag_needed", 1200, None,
                   IcmpEchoed("tcp", 1, 1460))
    assert action("+0 < icmp unreachable [5000:6000(1000)]") == \
        IcmpPacket(INBOUND, "unreachable", None, None, None, IcmpEchoed("tcp", 5000, 1000))
    assert action("+0 < icmp unreachable port_unreachable [udp (100)]") == \
        IcmpPacket(INBOUND, "unreachable", "port_unreachable", None, None,
                   IcmpEchoed("udp", 0, 100))
    assert action("+0 > icmp echo_reply id 7") == \
        IcmpPacket(OUTBOUND, "echo_reply", None, None, 7, None)


def test_icmp_code_from_define():
    p = action("+0 < icmp unreachable CODE [0:10(10)]", defines={"CODE": "host_unreachable"})
    assert p.code == "host_unreachable"


def test_encapsulated_packet_is_unsupported_and_parsing_goes_on():
    s = parse_script(
        "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
        "+0 < ipv4 192.168.0.1 > 192.0.2.1: gre: S 0:0(0) win 1\n"
        "+0 > mpls (label 0, tc 0, [S], ttl 255): . 1:1(0) ack 1\n"
        "+0 close(3) = 0\n", "t.pkt")
    assert [type(e.action).__name__ for e in s.events] == [
        "Syscall", "Unsupported", "Unsupported", "Syscall"]
    u = s.events[1].action
    assert isinstance(u, Unsupported) and u.line == 2
    assert "ipv4" in u.what
    assert u.text == "< ipv4 192.168.0.1 > 192.0.2.1: gre: S 0:0(0) win 1"
    assert s.unsupported() == [(2, u.what), (3, s.events[2].action.what)]


@pytest.mark.parametrize("text,msg", [
    ("+0 < X 0:0(0) win 1", "invalid TCP flag: 'X'"),
    ("+0 < S 0:10(5) win 1", "inconsistent TCP sequence numbers and payload size"),
    ("+0 < S 0:0(0)", "window must be specified for inbound packets"),
    ("+0 < S 0:0(0) win 1 <...>", "<...> for TCP options can only be used with outbound"),
    ("+0 < [ect01] S 0:0(0) win 1", "[ect01] can only be used with outbound packets"),
    ("+0 < S 0:0(0) win 70000", "TCP window value out of range"),
    ("+0 < S 0:0(0) win 1 <mss 1000,,nop>", "expected a TCP option"),
    ("+0 < S 0:0(0) win 1 <mss 1000", "expected ',' or '>'"),
    ("+0 < S 0:0(0) win 1 <FO TFO_COOKIE>", "TFO_COOKIE' is not a valid hex string"),
    ("+0 < S 0:0(0) win 1 <FO abc>", "odd number of digits"),
    ("+0 < S 0:0 win 1", "expected '(' in start:end(length)"),
    ("+0 < S1:1(0) win 1", "expected a sequence range start:end(length), got ':'"),
])
def test_packet_errors(text, msg):
    with pytest.raises(DrillSyntaxError) as ei:
        parse_script("\n\n" + text + "\n", "x.pkt")
    assert str(ei.value).startswith("x.pkt:3: "), str(ei.value)
    assert msg in str(ei.value)


# --------------------------------------------------------------------------- options


def test_header_options_and_config():
    s = parse_script(
        "// header\n"
        "--tolerance_usecs=10000\n"
        "--mss=1000 --tcp_ts_tick_usecs=1000\n"
        "--ip_version=ipv4\n"
        "--send_omit_free\t// do not reuse send buffers\n"
        "--frobnicate=3\n"
        "--define=PROTO=IPPROTO_TCP\n"
        "0 socket(..., SOCK_STREAM, PROTO) = 3\n", "o.pkt")
    c = s.config
    assert (c.tolerance_usecs, c.mss, c.tcp_ts_tick_usecs, c.ip_version, c.send_omit_free) == \
        (10000, 1000, 1000, "ipv4", True)
    assert [(o.name, o.value, o.line, o.known) for o in s.options] == [
        ("tolerance_usecs", "10000", 2, True), ("mss", "1000", 3, True),
        ("tcp_ts_tick_usecs", "1000", 3, True), ("ip_version", "ipv4", 4, True),
        ("send_omit_free", None, 5, True), ("frobnicate", "3", 6, False),
        ("define", "PROTO=IPPROTO_TCP", 7, True)]
    assert [str(w) for w in s.warnings] == ["line 6: unknown option --frobnicate ignored"]
    assert s.defines == {"PROTO": "IPPROTO_TCP"}
    assert s.events[0].action.args[2] == Symbol("IPPROTO_TCP")


def test_command_line_options_override():
    s = parse_script("--tolerance_usecs=10000\n0 close(3) = 0\n",
                     options={"tolerance_usecs": "20000", "tcp_ts_ecr_scaled": None})
    assert s.config.tolerance_usecs == 20000
    assert s.config.tcp_ts_ecr_scaled


@pytest.mark.parametrize("text,msg", [
    ("--tolerance_usecs=abc\n", "bad --tolerance_usecs: abc"),
    ("--ip_version=ipv5\n", "bad --ip_version"),
    ("--mss\n", "option 'mss' requires an argument"),
    ("--strict_segments=1\n", "option 'strict_segments' forbids an argument"),
    ("0 close(3) = 0\n--mss=1000\n", "must come before the first event"),
])
def test_option_errors(text, msg):
    with pytest.raises(DrillSyntaxError) as ei:
        parse_script(text, "o.pkt")
    assert msg in str(ei.value)


# --------------------------------------------------------------------------- -D symbols


def test_defines_substitution():
    text = ("+0 < S 0:0(0) win 1 <FO TFO_COOKIE,nop,nop>\n"
            "+0 recvmsg(4, {msg_control=[{cmsg_level=CMSG_LEVEL_IP}]}, 0) = 0\n")
    s = parse_script(text, defines=KSFT_IPV4_DEFINES)
    assert s.events[0].action.options[0] == OptFastOpen(bytes.fromhex("3021b9d889017eeb"))
    cm = s.events[1].action.args[1].fields["msg_control"].items[0]
    assert cm.fields["cmsg_level"] == Symbol("SOL_IP")


def test_defines_values_are_relexed():
    s = parse_script("--define=LEN=1000\n"
                     '0 fcntl(3, F_SETFL, FLAGS) = 0\n'
                     '+0 setsockopt(3, SOL_TCP, TCP_CONGESTION, CC, 5) = 0\n'
                     "+0 write(3, ..., LEN) = LEN\n",
                     defines={"FLAGS": "O_RDWR|O_NONBLOCK", "CC": '"reno"'})
    assert s.events[0].action.args[2] == BitOr((Symbol("O_RDWR"), Symbol("O_NONBLOCK")))
    assert s.events[1].action.args[3] == String("reno")
    assert s.events[2].action.args[2] == Int(1000)
    assert s.events[2].action.result == Int(1000)


def test_command_line_define_wins_and_keywords_are_not_replaced():
    s = parse_script("--define=X=1\n0 write(3, ..., X) = 0\n+0 > . 1:1(0) ack 1\n",
                     defines={"X": "2", "ack": "7"})
    assert s.events[0].action.args[2] == Int(2)
    assert s.events[1].action.ack == 1


# --------------------------------------------------------------------------- shell


def test_shell_block_parsing():
    s = parse_script(
        "`../common/defaults.sh\n"
        "sysctl -q net.ipv4.tcp_rmem=\"4096 540000 $((15*1024*1024))\"\n"
        "sysctl -w net/ipv4/tcp_sack=0 net.ipv4.tcp_dsack=0  # two at once\n"
        "echo 0 > /proc/sys/net/ipv4/tcp_timestamps\n"
        "../common/set_sysctls.py /proc/sys/net/ipv4/tcp_wmem=\"4096 50000 4194304\"\n"
        "tc qdisc add dev tun0 root pfifo\n"
        "ip link set dev tun0 mtu 1280; ip tcp_metrics flush all > /dev/null 2>&1\n"
        "nstat -n && sysctl net.ipv4.tcp_ecn\n"
        "`\n"
        "0 close(3) = 0\n", "s.pkt")
    cmds = s.init_command.commands
    assert [type(c).__name__ for c in cmds] == [
        "RunScript", "SysctlSet", "SysctlSet", "SysctlSet", "SysctlSet", "SysctlSet",
        "DeviceSetup", "DeviceSetup", "DeviceSetup", "ShellOther", "ShellOther"]
    assert cmds[0] == RunScript("../common/defaults.sh", "../common/defaults.sh", ())
    assert [(c.name, c.value, c.line) for c in cmds if isinstance(c, SysctlSet)] == [
        ("net.ipv4.tcp_rmem", "4096 540000 15728640", 2),
        ("net.ipv4.tcp_sack", "0", 3), ("net.ipv4.tcp_dsack", "0", 3),
        ("net.ipv4.tcp_timestamps", "0", 4),
        ("net.ipv4.tcp_wmem", "4096 50000 4194304", 5)]
    assert cmds[6] == DeviceSetup("tc qdisc add dev tun0 root pfifo")
    assert cmds[7] == DeviceSetup("ip link set dev tun0 mtu 1280")
    assert cmds[8] == DeviceSetup("ip tcp_metrics flush all > /dev/null 2>&1")
    assert cmds[9] == ShellOther("nstat -n")
    assert cmds[10] == ShellOther("sysctl net.ipv4.tcp_ecn")
    assert s.init_command.raw.startswith("../common/defaults.sh\nsysctl")


def test_timed_command_and_cleanup():
    s = parse_script("`./defaults.sh`\n"
                     "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
                     "+0 `tc qdisc delete dev tun0 root 2>/dev/null ; "
                     "tc qdisc add dev tun0 root pfifo limit 0`\n"
                     "+0 `nstat | grep TcpExtOutOfWindowIcmps > /dev/null`\n"
                     "\n`/tmp/sysctl_restore_${PPID}.sh`\n", "c.pkt")
    assert s.init_command == ShellBlock("./defaults.sh", (RunScript(
        "./defaults.sh", "./defaults.sh", ()),))
    assert s.events[1].action == ShellBlock(
        "tc qdisc delete dev tun0 root 2>/dev/null ; tc qdisc add dev tun0 root pfifo limit 0",
        (DeviceSetup("tc qdisc delete dev tun0 root 2>/dev/null"),
         DeviceSetup("tc qdisc add dev tun0 root pfifo limit 0")))
    assert s.events[2].action.commands == (
        ShellOther("nstat | grep TcpExtOutOfWindowIcmps > /dev/null"),)
    assert s.cleanup_command.line == 6
    assert s.cleanup_command.commands[0].path == "/tmp/sysctl_restore_${PPID}.sh"


def test_shell_define_expansion_in_parsed_view_only():
    cmds = parse_shell("sysctl -q net.ipv4.tcp_fastopen_key=${KEY}", 1, {"KEY": "a-b-c-d"})
    assert cmds == (SysctlSet("sysctl -q net.ipv4.tcp_fastopen_key=${KEY}",
                              "net.ipv4.tcp_fastopen_key", "a-b-c-d"),)


def test_untimed_command_between_events_is_an_error():
    with pytest.raises(DrillSyntaxError) as ei:
        parse_script("0 close(3) = 0\n`echo hi`\n+0 close(4) = 0\n", "u.pkt")
    assert str(ei.value).startswith("u.pkt:2: expected an event time")


# --------------------------------------------------------------------------- code, comments


def test_code_block():
    s = parse_script("0 close(3) = 0\n"
                     "+0.01 %{\n"
                     "assert tcpi_delivered_ce == 0, tcpi_delivered_ce\n"
                     "}%\n"
                     "+0 %{ assert tcpi_probes == 0, tcpi_probes; \\\n"
                     "      assert tcpi_backoff == 0 }%\n"
                     "+0 close(4) = 0\n", "k.pkt")
    assert s.events[1].action == CodeBlock(
        "\nassert tcpi_delivered_ce == 0, tcpi_delivered_ce\n")
    assert s.events[1].line == 2
    assert s.events[2].action.text.startswith("assert tcpi_probes == 0")
    assert s.events[3].line == 7


def test_comments_keep_line_numbers():
    s = parse_script("/* a\n   multi-line\n   comment */\n"
                     "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3 // trailing\n"
                     "// whole line\n"
                     "+0 /* inline */ close(3) = 0\r\n", "m.pkt")
    assert [e.line for e in s.events] == [4, 6]


def test_event_text():
    s = parse_script("   +0 < S 0:0(0) win 1 <mss 1000>   // why\n", "e.pkt")
    assert s.events[0].text == "+0 < S 0:0(0) win 1 <mss 1000>"
    assert s.events[0].describe() == "line 1: +0 < S 0:0(0) win 1 <mss 1000>"


@pytest.mark.parametrize("text,line,msg", [
    ("0 close(3) = 0\n+0 close(3 = 0\n", 2, "expected ',' or ')'"),
    ("0 close(3) 0\n", 1, "expected '=' and the expected result of close()"),
    ("0 close(3) = 0\n+0 `unterminated\n\n", 2, "unterminated `command`"),
    ("0 close(3) = 0\n\n+0 %{ x = 1\n", 3, "unterminated %{ code block"),
    ('0 write(3, "abc, 3) = 3\n', 1, "unterminated string"),
    ("/* never closed\n0 close(3) = 0\n", 1, "unterminated /* comment"),
    ("0 close(3) = 0\n+0 @\n", 2, "expected a packet"),
    ("close(3) = 0\n", 1, "expected an event time"),
    ("0 close(3) = 0\n+0 write(3, ..., 1.5) = 0\n", 2, "expected an expression"),
])
def test_syntax_errors_carry_file_and_line(text, line, msg):
    with pytest.raises(DrillSyntaxError) as ei:
        parse_script(text, "bad.pkt")
    assert ei.value.line == line
    assert ei.value.path == "bad.pkt"
    assert str(ei.value).startswith(f"bad.pkt:{line}: ")
    assert msg in str(ei.value)


def test_parse_file_error_names_the_file(tmp_path):
    p = tmp_path / "broken.pkt"
    p.write_text("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n+0 < Q 0:0(0) win 1\n")
    with pytest.raises(DrillSyntaxError) as ei:
        parse_file(p)
    assert str(ei.value).startswith(f"{p}:2: invalid TCP flag: 'Q'")


def test_tokenizer_longest_match():
    kinds = [(t.kind, t.text) for t in tokenize("0...0.100 1:1001(1000) 0x1f 3021b9d8 "
                                                  "192.0.2.1 -1 .04")[:-1]]
    assert kinds == [
        ("INT", "0"), ("ELLIPSIS", "..."), ("FLOAT", "0.100"), ("INT", "1"), ("CHAR", ":"),
        ("INT", "1001"), ("CHAR", "("), ("INT", "1000"), ("CHAR", ")"), ("HEX", "0x1f"),
        ("WORD", "3021b9d8"), ("IPV4", "192.0.2.1"), ("INT", "-1"), ("FLOAT", ".04")]


def test_script_equality_ignores_lines():
    a = parse_script("0 close(3) = 0\n")
    b = parse_script("\n\n0 close(3) = 0\n")
    assert a.events == b.events
    assert a.events[0].line == 1 and b.events[0].line == 3


# --------------------------------------------------------------------------- robustness

from hypothesis import given, settings, strategies as st  # noqa: E402

_PIECES = st.sampled_from([
    "0", "+0", "+.1", "*", "~", "...", " ", "\n", "<", ">", "S", "S.", ".", "P.", "F.", "R",
    "-", "1:1(0)", "0:10(10)", "ack", "1", "win", "257", "<mss 1000,nop>", "<...>", "[ect0]",
    "socket(", "close(", ")", "(", "=", "-1", "EAGAIN", "(Resource busy)", "[", "]", "{", "}",
    ",", "|", "O_RDWR", '"x"', "`sysctl -q a.b=1`", "%{ x }%", "// c\n", "/* c */", "--mss=1",
    "icmp", "udp", "unreachable", "ipv4", "TS", "val", "ecr", "sack", "1:2", "FO", "md5",
    "0x1f", "3.5", "192.0.2.1", "`", '"', "%{", "/*",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_parser_only_raises_syntax_errors(text):
    try:
        parse_script(text, "fuzz.pkt")
    except DrillSyntaxError as e:
        assert str(e).startswith("fuzz.pkt:")
        assert e.line >= 1
