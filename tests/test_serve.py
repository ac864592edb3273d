"""`ustack serve` with `ustack ss` / `ustack nstat` over its control socket.

The server runs as a subprocess in the private network namespace it makes itself; the test
reaches it there with nsenter, as its start message says.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
USTACK = [sys.executable, "-m", "ustack"]


def ustack(*args: str, timeout: float = 10,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(USTACK + list(args), env=env or ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def control_dir():
    # reachable by uid 65534 (pytest's tmp_path is under a 0700 directory), so the refusal
    # tested below is the server's SO_PEERCRED check, not file permissions
    d = tempfile.mkdtemp(prefix="ustack-serve-test-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> tuple[re.Match, str]:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
            m = re.search(pattern, seen)
            if m:
                return m, seen
    raise AssertionError(f"serve did not print {pattern!r}; stdout so far:\n{seen}\n"
                         f"stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


def _ns_holders(inode: int) -> list[str]:
    holders = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                    holders.append(pid)
            except OSError:
                pass
    return holders


@pytest.mark.root
def test_serve_ss_nstat_and_clean_exit(control_dir: str) -> None:
    path = os.path.join(control_dir, "ctl.sock")
    proc = subprocess.Popen(USTACK + ["serve", "--app", "echo", "--port", "7", "--control", path,
                                      "--sysctl", "ustack.tcp_timewait_len=5", "--offload"],
                            env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        m, _ = _read_until(proc, r"net:\[(\d+)\].*nsenter --net=(/proc/\d+/task/\d+/ns/net)", 5)
        inode, nspath = int(m.group(1)), m.group(2)
        _read_until(proc, r"echo on 198\.18\.0\.2:7", 5)
        assert os.stat(nspath).st_ino == inode
        assert stat_is_socket(path)

        # a client in the server's namespace, as the start message says
        client = subprocess.run(
            ["nsenter", f"--net={nspath}", sys.executable, "-c",
             "import socket; s = socket.create_connection(('198.18.0.2', 7), 3); "
             "s.sendall(b'ping ustack'); s.shutdown(socket.SHUT_WR); b = b''\n"
             "while True:\n    c = s.recv(100)\n    if not c: break\n    b += c\n"
             "print(b.decode())"], capture_output=True, text=True, timeout=10)
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "ping ustack"

        ss = ustack("ss", "-tanoe", "--control", path)   # -a: listeners too, as with ss
        assert ss.returncode == 0, ss.stderr
        lines = ss.stdout.splitlines()
        assert lines[0].startswith("State") and "Local Address:Port" in lines[0]
        assert any(re.match(r"LISTEN\s.*198\.18\.0\.2:7\s", line) for line in lines[1:]), ss.stdout

        nstat = ustack("nstat", "--control", path, "-as")
        assert nstat.returncode == 0, nstat.stderr
        counters = {line.split()[0]: line.split()[1] for line in nstat.stdout.splitlines()[1:]}
        assert int(counters["TcpPassiveOpens"]) == 1
        assert all(int(v) for v in counters.values())
        nstat_all = ustack("nstat", "--control", path, "-asz")
        assert nstat_all.returncode == 0
        assert len(nstat_all.stdout.splitlines()) > len(nstat.stdout.splitlines())

        # a non-root peer is refused by uid, with a reason (client run from the bare file:
        # uid 65534 cannot read this venv, and the client needs only the standard library)
        setpriv = shutil.which("setpriv")
        if setpriv and os.access("/usr/bin/python3", os.X_OK):
            client_file = str(REPO / "ustack" / "control.py")
            code = ("import importlib.util, sys; "
                    f"spec = importlib.util.spec_from_file_location('c', {client_file!r}); "
                    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                    f"sys.exit(m.ss({path!r}))")
            refused = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                                      "/usr/bin/python3", "-c", code],
                                     capture_output=True, text=True, timeout=10)
            assert refused.returncode == 1, refused
            assert "only root" in refused.stderr and "uid 65534" in refused.stderr, refused.stderr
            assert "LISTEN" not in refused.stdout
        # the refused peer did not break the server
        assert ustack("ss", "--control", path).returncode == 0

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert not os.path.lexists(path)
    assert not _ns_holders(inode)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not re.search(r"^\d+: ust", links, re.M), links


def stat_is_socket(path: str) -> bool:
    return stat.S_ISSOCK(os.lstat(path).st_mode)


def test_no_server_is_a_clear_error(control_dir: str) -> None:
    path = os.path.join(control_dir, "nobody-here.sock")
    for cmd in ("ss", "nstat"):
        r = ustack(cmd, "--control", path)
        assert r.returncode != 0
        assert f"no ustack serve is listening on {path}" in r.stderr
        assert "Traceback" not in r.stderr
    # a stale socket file (a killed server's) gives the same message
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    r = ustack("ss", "--control", path)
    assert r.returncode != 0 and "no ustack serve is listening" in r.stderr


@pytest.mark.root
def test_serve_refuses_a_second_server_on_the_same_control_socket(control_dir: str) -> None:
    path = os.path.join(control_dir, "ctl.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        r = ustack("serve", "--app", "discard", "--control", path)
        assert r.returncode == 1
        assert "already listening" in r.stderr
        assert os.path.exists(path)  # not someone else's to remove
    finally:
        listener.close()


def _in_ns(nspath: str, code: str, **kw) -> subprocess.Popen[str]:
    """A Python client in the server's namespace (the kernel side of its TUN device)."""
    return subprocess.Popen(["nsenter", f"--net={nspath}", sys.executable, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


HTTP_GET = ("import socket; s = socket.create_connection(('198.18.0.2', 80), 3); "
            "s.sendall(b'GET /x HTTP/1.0\\r\\n\\r\\n'); b = b''\n"
            "while True:\n    c = s.recv(1000)\n    if not c: break\n    b += c\n"
            "print(b.split(b'\\r\\n')[0].decode())")
HOLD_OPEN = ("import socket, sys; s = socket.create_connection(('198.18.0.2', 80), 3); "
             "print(s.getsockname()[1], flush=True); sys.stdin.read()")


@pytest.mark.root
def test_serve_ss_filters_nstat_history_and_pcap(control_dir: str, tmp_path) -> None:
    path = os.path.join(control_dir, "ctl.sock")
    pcap = str(tmp_path / "serve.pcap")
    env = {**ENV, "USTACK_NSTAT_HISTORY": str(tmp_path / "nstat.history")}
    proc = subprocess.Popen(USTACK + ["serve", "--app", "http", "--control", path,
                                      "--pcap", pcap], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = None
    try:
        m, _ = _read_until(proc, r"nsenter --net=(/proc/\d+/task/\d+/ns/net)", 5)
        nspath = m.group(1)
        _read_until(proc, r"http on 198\.18\.0\.2:80", 5)
        # one finished HTTP request (ustack closes first: TIME-WAIT on its side)...
        get = _in_ns(nspath, HTTP_GET)
        out, err = get.communicate(timeout=10)
        assert get.returncode == 0 and out.strip() == "HTTP/1.0 200 OK", err
        # ... and one connection held open (ESTAB)
        holder = _in_ns(nspath, HOLD_OPEN, stdin=subprocess.PIPE)
        held_port = int(holder.stdout.readline())

        def ss(*args: str) -> list[str]:
            r = ustack("ss", "--control", path, *args)
            assert r.returncode == 0, r.stderr
            return r.stdout.splitlines()

        default = ss("-tn")
        assert default[0].split()[:3] == ["State", "Recv-Q", "Send-Q"]
        states = sorted(line.split()[0] for line in default[1:])
        assert states == ["ESTAB", "TIME-WAIT"], default   # no listener without -a
        assert [line.split()[0] for line in ss("-tan")[1:]].count("LISTEN") == 1
        assert [line.split()[0] for line in ss("-l", "-H")] == ["LISTEN"]
        listening = ss("-H", "state", "listening")
        assert len(listening) == 1 and re.match(r"LISTEN\s.*198\.18\.0\.2:80\s+0\.0\.0\.0:\*",
                                                listening[0]), listening
        tw = ss("-tno", "state", "time-wait")
        assert len(tw) == 2 and tw[1].startswith("TIME-WAIT")
        assert re.search(r"timer:\(timewait,\d+\.\d+sec,0\)$", tw[1]), tw
        estab = ss("-tnoi", "state", "established", "dport", "=", f":{held_port}")
        assert len(estab) == 3 and estab[1].startswith("ESTAB"), estab
        assert f"198.18.0.1:{held_port}" in estab[1]
        assert estab[2].startswith("\t") and "cwnd:" in estab[2] and "rtt:" in estab[2]
        assert len(ss("-H", "dport", "==", str(held_port))) == 1
        assert len(ss("-H", "-a", "sport = :80")) == 3
        assert len(ss("-H", "-a", "sport = :8080")) == 0
        assert len(ss("-H", "dst", "198.18.0.1")) == 2
        assert len(ss("-H", "dst", "198.18.0.9")) == 0
        misplaced = ustack("ss", "--control", path, "src", "198.18.0.2:80", "state", "all")
        assert misplaced.returncode == 2 and "bad filter" in misplaced.stderr   # state first
        assert len(ss("-H", "state", "connected", "src", "198.18.0.2:80")) == 2
        assert len(ss("-H", "state", "bucket")) == 1

        # nstat: the first call has no history, the next ones print what moved since
        first = ustack("nstat", "--control", path, "-j", env=env)
        assert first.returncode == 0, first.stderr
        kernel = json.loads(first.stdout)["kernel"]
        assert kernel["TcpPassiveOpens"] == 2 and kernel["TcpExtTW"] == 1
        assert 0 not in kernel.values()
        again = json.loads(ustack("nstat", "--control", path, "-j", env=env).stdout)["kernel"]
        assert "TcpPassiveOpens" not in again   # nothing opened since the last call
        get = _in_ns(nspath, HTTP_GET)
        assert get.communicate(timeout=10)[0].strip() == "HTTP/1.0 200 OK"
        moved = json.loads(ustack("nstat", "--control", path, "-j", env=env).stdout)["kernel"]
        assert moved["TcpPassiveOpens"] == 1 and moved["TcpExtTW"] == 1
        absolute = ustack("nstat", "--control", path, "-a", "-s", "TcpPassive*", env=env)
        assert absolute.stdout.split()[:3] == ["#kernel", "TcpPassiveOpens", "3"]
        zeros = json.loads(ustack("nstat", "--control", path, "-jaz", env=env).stdout)["kernel"]
        assert zeros["TcpExtTCPAbortOnMemory"] == 0 and zeros["TcpPassiveOpens"] == 3
        assert ustack("nstat", "--control", path, "-n", env=env).stdout == ""

        holder.stdin.close()
        holder.wait(timeout=5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        for p in (holder, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert proc.returncode == 0, err
    assert re.search(r"\d+ packets written to " + re.escape(pcap), out), out
    # the capture: every packet of the TUN device, both directions, as tcpdump reads it
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed (.ci/setup installs it)")
    dump = subprocess.run(["tcpdump", "-n", "-r", pcap], capture_output=True, text=True,
                          timeout=20)
    assert dump.returncode == 0, dump.stderr
    lines = dump.stdout.splitlines()
    syns = [line for line in lines if "> 198.18.0.2.80: Flags [S]," in line]
    assert len(syns) == 3, dump.stdout
    assert sum("198.18.0.2.80 > 198.18.0.1." in line and "Flags [S.]" in line
               for line in lines) == 3
    assert any("HTTP/1.0 200 OK" in line or "Flags [FP.]" in line or "Flags [P.]" in line
               for line in lines if "198.18.0.2.80 >" in line)
    from ustack.ladder import connections, parse_segments
    from ustack.pcap import read_pcap
    assert len(connections(parse_segments(read_pcap(pcap)))) == 3


@pytest.mark.root
def test_serve_pcap_that_cannot_be_opened(control_dir: str) -> None:
    r = ustack("serve", "--app", "echo", "--control", os.path.join(control_dir, "c.sock"),
               "--pcap", "/nonexistent-dir/x.pcap")
    assert r.returncode == 1
    assert "cannot open pcap file /nonexistent-dir/x.pcap" in r.stderr
    assert "Traceback" not in r.stderr
