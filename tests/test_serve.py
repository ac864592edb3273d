"""`ustack serve` with `ustack ss` / `ustack nstat` over its control socket.

The server runs as a subprocess in the private network namespace it makes itself; the test
reaches it there with nsenter, as its start message says.
"""
from __future__ import annotations

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


def ustack(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(USTACK + list(args), env=ENV, capture_output=True, text=True,
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
                                      "--sysctl", "ustack.tcp_timewait_len=5"],
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

        ss = ustack("ss", "--control", path)
        assert ss.returncode == 0, ss.stderr
        lines = ss.stdout.splitlines()
        assert lines[0].startswith("State") and "Local Address:Port" in lines[0]
        assert any(re.match(r"LISTEN\s.*198\.18\.0\.2:7\s", line) for line in lines[1:]), ss.stdout

        nstat = ustack("nstat", "--control", path)
        assert nstat.returncode == 0, nstat.stderr
        counters = dict(line.split() for line in nstat.stdout.splitlines()[1:])
        assert int(counters["TcpPassiveOpens"]) == 1
        assert all(int(v) for v in counters.values())
        nstat_all = ustack("nstat", "--control", path, "-a")
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
