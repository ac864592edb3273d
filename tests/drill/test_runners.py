"""Tests of the drill runners on small scripts: what passes, and what MUST fail (a runner
that cannot fail proves nothing).  The ustack target runs in virtual time; the tests of the
linux target need root (a private namespace and a TUN device per run)."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from ustack._segment import internet_checksum
from ustack.counters import Counters
from ustack.drill import parse_script
from ustack.drill.cli import main as drill_main
from ustack.drill.run_ustack import RunResult, build_tcp_packet, read_tags, run_ustack
from ustack.drill.seqmap import InboundTcp, SeqMapper
from ustack.wire import describe, ip_to_int, parse

PASSIVE = """\
`sysctl -q net.ipv4.tcp_rmem="4096 131072 6291456"`
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 65535 <mss 1460,sackOK,nop,nop,nop,wscale 7>
   +0 > S. 0:0(0) ack 1 win 64240 <mss 1460,nop,nop,sackOK,nop,wscale 7>
 +.01 < . 1:1(0) ack 1 win 502
   +0 accept(3, ..., ...) = 4
"""


def run(text: str, tmp_path: Path | None = None, **kw) -> RunResult:
    if tmp_path is not None:
        p = tmp_path / "t.pkt"
        p.write_text(text)
        return run_ustack(str(p), **kw)
    return run_ustack(parse_script(text, "<test>"), **kw)


def failed(res: RunResult, line: int | None = None, contains: str = "") -> None:
    assert not res.ok, "the runner passed a script that must fail"
    f = res.failure
    assert f is not None
    if line is not None:
        assert f.line == line, f.render()
    assert contains in f.message, f.render()


# --------------------------------------------------------------------------- passing


def test_passive_handshake_and_data_pass() -> None:
    res = run(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
   +0 > . 1:1(0) ack 101
   +0 read(4, ..., 1000) = 100
   +0 close(4) = 0
   +0 > F. 1:1(0) ack 101
""", strict_end=True)
    assert res.ok, res.failure and res.failure.render()
    assert res.target == "ustack"


def test_sixty_seconds_cost_nothing() -> None:
    res = run(PASSIVE + """\
   +0 close(4) = 0
   +0 > F. 1:1(0) ack 1
 +.01 < F. 1:1(0) ack 2 win 502
   +0 > . 2:2(0) ack 2
  +61 < . 2:2(0) ack 2 win 502
   +0 > R 2:2(0)
""")
    assert res.ok, res.failure and res.failure.render()
    assert res.script_s > 61 and res.elapsed_s < 5


def test_blocking_read_completes_when_data_arrives() -> None:
    res = run(PASSIVE + """\
   +0...0.100 read(4, ..., 1000) = 500
  +.1 < P. 1:501(500) ack 1 win 502
   +0 > . 1:1(0) ack 501
""")
    assert res.ok, res.failure and res.failure.render()


def test_nonblocking_connect_poll_and_so_error() -> None:
    res = run("""\
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 fcntl(3, F_SETFL, O_RDWR|O_NONBLOCK) = 0
   +0 connect(3, ..., ...) = -1 EINPROGRESS (Operation now in progress)
   +0 > S 0:0(0) <...>
   +0 poll([{fd=3, events=POLLOUT, revents=0}], 1, 0) = 0
 +.01 < S. 0:0(0) ack 1 win 5792 <mss 1460,nop,nop,sackOK,nop,wscale 7>
   +0 > . 1:1(0) ack 1
   +0 poll([{fd=3, events=POLLOUT, revents=POLLOUT}], 1, 0) = 1
   +0 getsockopt(3, SOL_SOCKET, SO_ERROR, [0], [4]) = 0
""")
    assert res.ok, res.failure and res.failure.render()


def test_rst_for_closed_port_without_any_socket() -> None:
    res = run("""\
    0 < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
   +0 > R. 0:0(0) ack 1 win 0
""")
    assert res.ok, res.failure and res.failure.render()


# --------------------------------------------------------------------------- must fail


def test_wrong_ack_fails() -> None:
    res = run(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
   +0 > . 1:1(0) ack 100
""")
    failed(res, 11, "expected ack 100, got ack 101")
    assert res.failure is not None
    assert any(" . " in a and "ack 101" in a for a in res.failure.actual)
    assert any("ESTAB" in s for s in res.failure.state)


def test_wrong_flags_and_options_fail() -> None:
    failed(run(PASSIVE.replace("> S. 0:0(0) ack 1 win 64240 <mss 1460,nop,nop,sackOK,nop,"
                               "wscale 7>", "> S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,"
                                            "wscale 9>")), 7, "wscale")
    failed(run(PASSIVE.replace("> S. 0:0(0) ack 1 win 64240", "> S 0:0(0) ack 1 win 64240")),
           7, "expected flags S, got flags S.")


def test_missing_packet_fails() -> None:
    res = run(PASSIVE + """\
   +0 write(4, ..., 0) = 0
   +0 > P. 1:101(100) ack 1
""")
    failed(res, 11, "missing outbound packet")


def test_extra_packet_between_events_fails_at_the_next_expected_one() -> None:
    # the quick ACK of the data is not in the script: it is what the next '>' line finds
    res = run(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
   +0 read(4, ..., 1000) = 100
   +0 close(4) = 0
   +0 > F. 1:1(0) ack 101
""")
    failed(res, 13, "expected flags F., got flags .")


def test_extra_packet_at_the_end_is_a_warning_or_with_strict_end_a_failure() -> None:
    script = PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
"""
    res = run(script)
    assert res.ok
    assert any("not checked" in w and "ack 101" in w for w in res.warnings)
    res = run(script, strict_end=True)
    failed(res, 10, "unexpected outbound packet")


def test_wrong_errno_fails() -> None:
    res = run(PASSIVE + """\
   +0 fcntl(4, F_SETFL, O_RDWR|O_NONBLOCK) = 0
   +0 read(4, ..., 1000) = -1 ECONNRESET (Connection reset by peer)
""")
    failed(res, 11, "expected errno ECONNRESET but got EAGAIN")


def test_wrong_result_fails() -> None:
    res = run(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
   +0 > . 1:1(0) ack 101
   +0 read(4, ..., 1000) = 99
""")
    failed(res, 12, "expected result 99 but got 100")
    res = run(PASSIVE + "   +0 write(4, ..., 10) = -1 EPIPE (Broken pipe)\n")
    failed(res, 10, "but got 10")


def test_wrong_out_parameters_fail() -> None:
    failed(run(PASSIVE + "   +0 getsockopt(4, SOL_TCP, TCP_NODELAY, [1], [4]) = 0\n"),
           10, "getsockopt value: expected 1, got 0")
    failed(run(PASSIVE + "   +0 ioctl(4, SIOCINQ, [5]) = 0\n"), 10, "ioctl value")
    failed(run(PASSIVE + "   +0 poll([{fd=4, events=POLLIN, revents=POLLIN}], 1, 0) = 1\n"),
           10, "")


def test_early_packet_is_a_timing_error() -> None:
    res = run(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
 +.04 > . 1:1(0) ack 101
""")
    failed(res, 11, "timing error")


def test_blocking_call_that_returns_at_once_fails_its_end_time() -> None:
    res = run(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
   +0 > . 1:1(0) ack 101
   +0...0.5 read(4, ..., 1000) = 100
""")
    failed(res, 12, "expected system call return")


def test_unmarked_call_that_never_returns_fails() -> None:
    res = run(PASSIVE + "   +0 read(4, ..., 1000) = 100\n")
    failed(res, 10, "blocked and nothing woke it")


def test_first_event_must_be_at_zero() -> None:
    failed(run("+1 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"), 1, "time 0")


def test_unsupported_constructs_are_named_with_their_line() -> None:
    res = run("    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n   +0 < udp (10)\n")
    failed(res, 2, "UdpPacket")
    assert res.failure is not None and res.failure.kind == "unsupported"
    res = run("    0 epoll_create(1) = 3\n")
    failed(res, 1, "epoll_create")


# --------------------------------------------------------------------------- init block


def test_init_block_settings(tmp_path: Path) -> None:
    (tmp_path / "defaults.sh").write_text(
        "#!/bin/bash\nip tcp_metrics flush all > /dev/null 2>&1\n"
        "sysctl -q net.ipv4.tcp_rmem=\"4096 131072 $((8*1024*1024))\"\n"
        "sysctl -q net.ipv4.tcp_pacing_ss_ratio=200\n"
        "tc qdisc add dev tun0 root pfifo\n")
    script = """\
`../missing/defaults.sh
./defaults.sh
sysctl -q net.ipv4.tcp_no_such_thing=1
echo 0 > /proc/sys/net/ipv4/tcp_timestamps`
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>
   +0 > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
   +0 %{ assert tcpi_snd_cwnd == 10 }%
"""
    res = run(script, tmp_path)
    assert res.ok, res.failure and res.failure.render()
    text = "\n".join(res.warnings + res.notes)
    assert "../missing/defaults.sh not found" in text
    assert "tcp_pacing_ss_ratio" in text and "tcp_no_such_thing" in text
    assert "device set-up skipped: tc qdisc add dev tun0 root pfifo" in text
    assert res.code_blocks_skipped == 1


def test_other_shell_commands_are_refused() -> None:
    res = run("`nstat -n`\n    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n")
    failed(res, 1, "shell command not supported: `nstat -n`")
    res = run("`sysctl -q net.ipv4.tcp_fin_timeout=abc`\n"
              "    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n")
    failed(res, 1, "tcp_fin_timeout")


# --------------------------------------------------------------------------- packets


def test_inbound_options_keep_the_script_order_and_checksums() -> None:
    m = SeqMapper(ip_to_int("198.18.0.1"), ip_to_int("198.18.0.2"))
    pkt = parse_script("0 < S 0:0(0) win 100 <nop,mss 1000,wscale 7,sackOK,nop,nop,"
                       "TS val 5 ecr 0,eol>\n").events[0].action
    ib = m.inbound(pkt)
    raw = build_tcp_packet(ib)
    assert internet_checksum(raw[:20]) == 0
    seg = parse(raw, Counters().values)
    assert seg is not None
    assert seg.options[:10] == b"\x01\x02\x04\x03\xe8\x03\x03\x07\x04\x02"
    assert (seg.mss, seg.wscale, seg.sack_ok, seg.ts_val) == (1000, 7, True, 5)
    assert describe(seg).startswith("S 0:0(0) win 100 <nop,mss 1000,wscale 7,sackOK,nop,nop,"
                                    "TS val 5 ecr 0,eol")
    tcp = raw[20:]
    pseudo = struct.pack("!IIBBH", ib.src, ib.dst, 0, 6, len(tcp))
    assert internet_checksum(pseudo + tcp) == 0


def test_inbound_without_options_and_with_payload() -> None:
    ib = InboundTcp(src=1, dst=2, sport=3, dport=4, seq=5, ack=6, flags=0x18, window=7,
                    payload=b"\0" * 9)
    seg = parse(build_tcp_packet(ib), Counters().values)
    assert seg is not None and seg.options == b"" and len(seg.payload) == 9


# --------------------------------------------------------------------------- CLI and tags


def test_cli_reports_and_exit_status(tmp_path: Path) -> None:
    good = tmp_path / "good.pkt"
    good.write_text(PASSIVE)
    bad = tmp_path / "bad.pkt"
    bad.write_text(PASSIVE + "   +0 < P. 1:101(100) ack 1 win 502\n   +0 > . 1:1(0) ack 7\n")
    out = io.StringIO()
    assert drill_main([str(good), "--target", "ustack"], out=out) == 0
    assert out.getvalue().startswith(f"PASS  {good} [ustack]")
    out = io.StringIO()
    assert drill_main([str(good), str(bad), "--target", "ustack"], out=out) == 1
    text = out.getvalue()
    assert f"FAIL  {bad} [ustack]" in text
    assert "line 11: expected ack 7, got ack 101" in text
    assert "script:   +0 > . 1:1(0) ack 7" in text
    assert "got:      198.18.0.2:8080 > 198.18.0.1:40000 . " in text
    assert "ESTAB" in text


def test_cli_defines_and_tolerance(tmp_path: Path) -> None:
    p = tmp_path / "d.pkt"
    p.write_text(PASSIVE + "   +0 < P. 1:101(100) ack 1 win 502\n"
                           "+.002 > . 1:1(0) ack LEN\n")
    assert drill_main([str(p), "--target", "ustack", "-D", "LEN=101"], out=io.StringIO()) == 0
    assert drill_main([str(p), "--target", "ustack", "-D", "LEN=101",
                       "--tolerance-usecs", "1000"], out=io.StringIO()) == 1


def test_tags_known_diff_and_ustack_only(tmp_path: Path) -> None:
    p = tmp_path / "k.pkt"
    p.write_text("// ustack-known-diff: the ack is wrong on purpose\n"
                 "// ustack-only: a ustack extension\n"
                 + PASSIVE + "   +0 < P. 1:101(100) ack 1 win 502\n   +0 > . 1:1(0) ack 7\n")
    tags = read_tags(str(p))
    assert tags.ustack_known_diff == "the ack is wrong on purpose"
    assert tags.ustack_only == "a ustack extension"
    out = io.StringIO()
    assert drill_main([str(p)], out=out) == 0
    text = out.getvalue()
    assert "XFAIL" in text and "[ustack]" in text and "SKIP" in text and "[linux]" in text
    p.write_text("// ustack-known-diff: fixed now\n" + PASSIVE)
    out = io.StringIO()
    assert drill_main([str(p), "--target", "ustack"], out=out) == 1
    assert "XPASS" in out.getvalue()


# --------------------------------------------------------------------------- linux


@pytest.mark.root
def test_linux_target_passes_and_fails_like_ustack() -> None:
    from ustack.drill.run_linux import run_linux
    res = run_linux(parse_script(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
   +0 > . 1:1(0) ack 101
   +0 read(4, ..., 1000) = 100
""", "<linux>"), strict_end=True)
    assert res.ok, res.failure and res.failure.render()
    res = run_linux(parse_script(PASSIVE + """\
   +0 < P. 1:101(100) ack 1 win 502
   +0 > . 1:1(0) ack 100
""", "<linux>"))
    failed(res, 11, "expected ack 100, got ack 101")
    assert res.failure is not None and any("ESTAB" in s for s in res.failure.state)
    res = run_linux(parse_script(PASSIVE + """\
   +0 fcntl(4, F_SETFL, O_RDWR|O_NONBLOCK) = 0
   +0 read(4, ..., 1000) = -1 ECONNRESET (Connection reset by peer)
""", "<linux>"))
    failed(res, 11, "expected errno ECONNRESET but got EAGAIN")


@pytest.mark.root
def test_linux_target_host_wide_settings() -> None:
    from ustack.drill.run_linux import _read_proc_sys, run_linux
    have = _read_proc_sys("net.ipv4.tcp_max_orphans")
    assert have is not None
    ok = run_linux(parse_script(f"`sysctl -q net.ipv4.tcp_max_orphans={have}`\n"
                                "    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n", "<hw>"))
    assert ok.ok, ok.failure and ok.failure.render()
    assert any("host-wide" in n for n in ok.notes)
    other = int(have) + 1
    bad = run_linux(parse_script(f"`sysctl -q net.ipv4.tcp_max_orphans={other}`\n"
                                 "    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n", "<hw>"))
    failed(bad, 1, "host-wide")
    assert bad.failure is not None and bad.failure.kind == "unsupported"
    # the host's value is untouched
    assert _read_proc_sys("net.ipv4.tcp_max_orphans") == have
    unknown = run_linux(parse_script("`sysctl -q net.ipv4.tcp_no_such_thing=1`\n"
                                     "    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n",
                                     "<hw>"))
    assert unknown.ok and any("no sysctl" in w for w in unknown.warnings)
