"""The `ustack` command line: --version, usage errors, ss's filters and nstat's history against
a stand-in control server, and quiet endings (Ctrl-C, a closed pipe).  The same commands
against a real `ustack serve` are in tests/test_serve.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from ustack.control import FilterError, NstatOptions, SsOptions, compile_filter, format_ss, \
    nstat_values

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
USTACK = [sys.executable, "-m", "ustack"]


def ustack(*args: str, env: dict[str, str] | None = None,
           timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(USTACK + list(args), env=env or ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def record(state: str, local: tuple[str, int], remote: tuple[str, int], **kw: Any) -> dict:
    base = {"state": state, "local": list(local), "remote": list(remote), "recv_q": 0,
            "send_q": 0, "timer": None, "orphan": False, "substate": None, "rto": 0,
            "rtt": 0.0, "cwnd": 0, "retrans": 0, "congestion": "", "ssthresh": 0,
            "rttvar": 0.0, "lost": 0, "sacked": 0, "retrans_out": 0, "reordering": 3,
            "ca_state": "", "mss": 0}
    base.update(kw)
    return base


SOCKETS = [
    record("LISTEN", ("198.18.0.2", 80), ("0.0.0.0", 0), send_q=128),
    record("LISTEN", ("198.18.0.2", 8080), ("0.0.0.0", 0), send_q=128),
    record("ESTAB", ("198.18.0.2", 80), ("198.18.0.1", 40000), timer=["on", 204, 0],
           rto=204, rtt=0.5, rttvar=0.25, cwnd=10, mss=1448, congestion="cubic"),
    record("ESTAB", ("198.18.0.2", 8080), ("198.18.0.7", 50000), cwnd=10, mss=1448,
           congestion="reno", retrans=2, retrans_out=1),
    record("TIME-WAIT", ("198.18.0.2", 80), ("198.18.0.1", 40001),
           timer=["timewait", 59_899, 0], substate="TIME-WAIT"),
    record("FIN-WAIT-2", ("198.18.0.2", 80), ("198.18.0.1", 40002),
           timer=["timewait", 1500, 0], substate="FIN-WAIT-2", orphan=False),
    record("SYN-RECV", ("198.18.0.2", 80), ("198.18.0.3", 1234), timer=["on", 900, 1]),
]


def shown(words: str, **opts: Any) -> list[tuple[str, str]]:
    """(state, peer) of the sockets ss shows for a filter."""
    lines = format_ss(SOCKETS, SsOptions(filter=words.split(), header=False, **opts))
    return [(line.split()[0], line.split()[4]) for line in lines]


# ------------------------------------------------------------------ ss: filters and format
def test_ss_default_states_are_the_connected_ones() -> None:
    states = [s for s, _ in shown("")]
    assert states == ["ESTAB", "ESTAB", "TIME-WAIT", "FIN-WAIT-2", "SYN-RECV"]
    assert [s for s, _ in shown("", all=True)][:2] == ["LISTEN", "LISTEN"]
    assert len(shown("", all=True)) == len(SOCKETS)
    assert [s for s, _ in shown("", listening=True)] == ["LISTEN", "LISTEN"]


@pytest.mark.parametrize("words, expected", [
    ("state established", ["ESTAB", "ESTAB"]),
    ("state time-wait", ["TIME-WAIT"]),
    ("state listening", ["LISTEN", "LISTEN"]),
    ("state listen state syn-recv", ["LISTEN", "LISTEN", "SYN-RECV"]),
    ("state bucket", ["TIME-WAIT", "SYN-RECV"]),
    # ss(8): "all the connected states except for syn-sent" (SYN-RECV is one of them)
    ("state synchronized", ["ESTAB", "ESTAB", "TIME-WAIT", "FIN-WAIT-2", "SYN-RECV"]),
    ("state connected exclude time-wait", ["ESTAB", "ESTAB", "FIN-WAIT-2", "SYN-RECV"]),
    ("state all", [r["state"] for r in SOCKETS]),
    ("state big", ["LISTEN", "LISTEN", "ESTAB", "ESTAB", "FIN-WAIT-2"]),
])
def test_ss_state_filters(words: str, expected: list[str]) -> None:
    assert [s for s, _ in shown(words)] == expected


@pytest.mark.parametrize("words, peers", [
    ("dport = :40000", ["198.18.0.1:40000"]),
    ("dport == 40000", ["198.18.0.1:40000"]),
    ("dport eq :50000", ["198.18.0.7:50000"]),
    ("sport = :8080", ["198.18.0.7:50000"]),
    ("sport != :80", ["198.18.0.7:50000"]),
    ("dport > :40000 and dport < :50000", ["198.18.0.1:40001", "198.18.0.1:40002"]),
    ("dst 198.18.0.1", ["198.18.0.1:40000", "198.18.0.1:40001", "198.18.0.1:40002"]),
    ("dst 198.18.0.0/30 and not dst 198.18.0.1", ["198.18.0.3:1234"]),
    ("dst 198.18.0.1:40001", ["198.18.0.1:40001"]),
    ("src 198.18.0.2:8080", ["198.18.0.7:50000"]),
    ("src :8080 or dst 198.18.0.3", ["198.18.0.7:50000", "198.18.0.3:1234"]),
    ("( dport = :40000 or dport = :40001 ) and state time-wait", None),   # state comes first
    ("state time-wait ( dport = :40000 || dport = :40001 )", ["198.18.0.1:40001"]),
])
def test_ss_address_filters(words: str, peers: list[str] | None) -> None:
    if peers is None:
        with pytest.raises(FilterError):
            compile_filter(words.split())
        return
    assert [p for _, p in shown(words)] == peers


@pytest.mark.parametrize("bad", ["state nonsense", "dport = :http", "dst", "dport = :80 )",
                                 "( dport = :80", "frobnicate 1", "dst 300.1.1.1",
                                 "dst > 198.18.0.1"])
def test_ss_bad_filters(bad: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(bad.split())


def test_ss_format_options() -> None:
    lines = format_ss(SOCKETS, SsOptions(all=True))
    head = lines[0].split()
    assert head[:3] == ["State", "Recv-Q", "Send-Q"] and "Address:Port" in lines[0]
    assert "timer:" not in "".join(lines)
    assert lines[1].split() == ["LISTEN", "0", "128", "198.18.0.2:80", "0.0.0.0:*"]
    timers = format_ss(SOCKETS, SsOptions(options=True, header=False))
    assert timers[0].endswith("timer:(on,204ms,0)")
    assert timers[2].endswith("timer:(timewait,59.899sec,0)")
    assert timers[4].endswith("timer:(on,900ms,1)")
    info = format_ss(SOCKETS, SsOptions(info=True, header=False, filter=["state", "estab"]))
    assert len(info) == 4 and info[1].startswith("\t")
    assert info[1].split() == ["cubic", "rto:204", "rtt:0.500/0.250", "mss:1448", "cwnd:10"]
    assert "retrans:1/2" in info[3]
    extended = format_ss(SOCKETS, SsOptions(extended=True, header=False,
                                            filter=["state", "fin-wait-2"]))
    assert extended[0].endswith("substate:FIN-WAIT-2") is False   # same as its state
    assert format_ss(SOCKETS, SsOptions(memory=True, header=False)) == \
        format_ss(SOCKETS, SsOptions(header=False))


# ------------------------------------------------------------------ nstat's history
def test_nstat_increments_since_the_last_call(tmp_path) -> None:
    hist = str(tmp_path / "hist")
    first = {"TcpActiveOpens": 2, "TcpExtTW": 1, "IpInReceives": 10}
    values, warning = nstat_values(first, "run-1", "/ctl", NstatOptions(), hist)
    assert values == first and warning is None   # no history: since the start
    later = {"TcpActiveOpens": 5, "TcpExtTW": 1, "IpInReceives": 30}
    values, _ = nstat_values(later, "run-1", "/ctl", NstatOptions(no_update=True), hist)
    assert values == {"TcpActiveOpens": 3, "TcpExtTW": 0, "IpInReceives": 20}
    values, _ = nstat_values(later, "run-1", "/ctl", NstatOptions(absolute=True), hist)
    assert values == later   # -a: since the start (and the history now holds `later`)
    values, _ = nstat_values(later, "run-1", "/ctl", NstatOptions(), hist)
    assert set(values.values()) == {0}
    # another server run (a restart) or another control socket: no usable history
    values, _ = nstat_values(later, "run-2", "/ctl", NstatOptions(no_update=True), hist)
    assert values == later
    values, _ = nstat_values(later, "run-1", "/other", NstatOptions(no_update=True), hist)
    assert values == later
    # -r: forget it
    values, _ = nstat_values(later, "run-1", "/ctl", NstatOptions(reset=True), hist)
    assert values == later
    assert json.load(open(hist))["/ctl"]["counters"] == later


def test_nstat_history_that_cannot_be_written_is_a_warning(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    values, warning = nstat_values({"TcpExtTW": 1}, "x", "/ctl", NstatOptions(),
                                   str(blocker / "hist"))
    assert values == {"TcpExtTW": 1} and warning and str(blocker) in warning


# ------------------------------------------------------------------ a stand-in server
class FakeServer:
    """Answers ss and nstat requests on an AF_UNIX socket like ustack serve (or not at all)."""

    def __init__(self, path: str, sockets: list[dict], counters: dict[str, int],
                 silent: bool = False) -> None:
        self.sockets, self.counters, self.silent = sockets, counters, silent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.held: list[socket.socket] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(conn)
                continue
            with conn:
                req = json.loads(conn.makefile().readline())
                if req["cmd"] == "ss":
                    resp: dict = {"sockets": self.sockets}
                else:
                    resp = {"counters": self.counters, "server": "fake"}
                conn.sendall(json.dumps(resp).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def fake(tmp_path):
    server = FakeServer(str(tmp_path / "ctl.sock"), SOCKETS,
                        {"IpInReceives": 7, "TcpActiveOpens": 0, "TcpExtTW": 3})
    yield str(tmp_path / "ctl.sock")
    server.close()


def test_cli_ss_and_nstat_against_a_stand_in(fake: str, tmp_path) -> None:
    r = ustack("ss", "-tan", "--control", fake, "state", "time-wait", "dport", "=", ":40001",
               "-o")   # options after the filter, as ss allows
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("TIME-WAIT")
    assert "timer:(timewait,59.899sec,0)" in lines[1]
    r = ustack("ss", "--control", fake, "dport = :80 or")   # one quoted argument
    assert r.returncode == 2 and "bad filter" in r.stderr and "usage:" in r.stderr
    env = {**ENV, "USTACK_NSTAT_HISTORY": str(tmp_path / "nstat.history")}
    r = ustack("nstat", "--control", fake, "-j", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"kernel": {"IpInReceives": 7, "TcpExtTW": 3}}
    r = ustack("nstat", "--control", fake, env=env)   # nothing moved since
    assert r.stdout.splitlines() == ["#kernel"]
    r = ustack("nstat", "--control", fake, "-az", "Tcp*", env=env)
    lines = r.stdout.splitlines()
    assert lines[0] == "#kernel"
    assert [line.split() for line in lines[1:]] == [["TcpActiveOpens", "0", "0.0"],
                                                   ["TcpExtTW", "3", "0.0"]]


def test_ctrl_c_exits_130_quietly(tmp_path) -> None:
    path = str(tmp_path / "silent.sock")
    server = FakeServer(path, [], {}, silent=True)   # accepts, never answers
    try:
        proc = subprocess.Popen(USTACK + ["ss", "--control", path], env=ENV, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)   # well inside the request, which waits up to 10 s
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        server.close()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_closed_pipe_ends_quietly(tmp_path) -> None:
    many = [record("TIME-WAIT", ("198.18.0.2", 80), ("198.18.0.1", 1024 + i),
                   timer=["timewait", 60_000, 0]) for i in range(5000)]
    path = str(tmp_path / "many.sock")
    server = FakeServer(path, many, {})
    read_end, write_end = os.pipe()
    os.close(read_end)   # like `ustack ss | head` once head has gone
    try:
        r = subprocess.run(USTACK + ["ss", "--control", path], env=ENV, cwd=REPO,
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
        server.close()
    assert r.returncode == 128 + signal.SIGPIPE
    assert r.stderr == ""


# ------------------------------------------------------------------ version and usage errors
def test_version() -> None:
    r = ustack("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"ustack {version('ustack')}"


@pytest.mark.parametrize("args", [["--bogus"], ["ss", "--bogus"], ["nstat", "-Q"],
                                  ["serve", "--app", "gopher"], ["ladder"], ["frobnicate"],
                                  []])
def test_bad_flags_are_usage_errors(args: list[str]) -> None:
    r = ustack(*args)
    assert r.returncode == 2, r
    assert "usage: ustack" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_of_the_subcommands() -> None:
    for cmd, word in (("ss", "FILTER"), ("nstat", "history"), ("ladder", "--conn")):
        r = ustack(cmd, "--help")
        assert r.returncode == 0 and word in r.stdout, r


@pytest.mark.root
def test_demo_runs_and_reports_progress() -> None:
    """`ustack demo` (the README's first command), smaller: every connection answered, the
    echo intact, progress lines on the long parts, the namespace removed."""
    done = ustack("demo", "--connections", "150", "--megabytes", "8", "--loop", "asyncio",
                  timeout=180)
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    assert "HTTP: 150/150 short connections answered" in out, out
    assert "  HTTP: 100/150 connections done" in out, out
    import re
    shown = [int(p) for p in re.findall(r"^  echo: (\d+)% back", out, re.M)]
    assert len(shown) >= 2 and shown == sorted(shown) and 25 <= shown[0] < 50, out
    assert "data intact" in out, out
    assert out.rstrip().endswith("namespace and TUN device removed."), out
