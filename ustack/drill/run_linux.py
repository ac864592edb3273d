"""Run a packetdrill script against the real Linux kernel, as packetdrill itself does.

Set-up, per run (all of it disappears with the run):

* a private, unnamed network namespace for the calling thread (:class:`ustack.netns.Netns`);
* a TUN device ``tun0`` in it whose kernel side is the stack under test: the kernel's
  address is **198.18.0.1/24** on the device (packetdrill's *local* address), and the
  script plays **198.18.0.2** (packetdrill's *remote* address), reached through the
  device's connected route.  The runner reads the kernel's packets from the TUN fd and
  injects the script's packets with ``os.write``;
* real kernel sockets for the system calls.  They are non-blocking underneath; a call the
  script makes on a blocking socket that would sleep is retried as the run goes on (the
  same pending-call logic as the ustack target), so one thread does everything;
* real time (``time.monotonic``).  The kernel here runs at HZ=250 (4 ms jiffies) and the
  runner is Python, so the default tolerance is **25 ms** (or the script's
  ``--tolerance_usecs`` if larger; ``--tolerance-usecs`` on the command line overrides).

Settings: ``sysctl`` lines (in the script and in files like ``../common/defaults.sh``) are
written in the namespace (:meth:`ustack.netns.Netns.sysctl`).  A setting that is host-wide
(it exists in the root namespace only, such as ``net.ipv4.tcp_max_orphans``) or read-only in
a namespace is **never written**: when the host already has the requested value the run goes
on with a note; otherwise the script fails on this target with a message naming the
setting, because a run under the wrong setting would judge the wrong thing.  A setting the
kernel does not know is a warning (packetdrill's ``sysctl -q`` would only complain).
Device lines (``tc``, ``ip link``, ``ip tcp_metrics``, ``ethtool``) are skipped with a note.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import fcntl as _fcntl
import os
import select
import socket
import struct
import threading
import time
from typing import Any, Callable

from . import ast as A
from .run_ustack import Failure, RunResult, Runner, ScriptFailure, Target, load_script
from .sockets import (
    MSG_DONTWAIT, O_NONBLOCK, POLLIN, POLLOUT, SOCK_NONBLOCK, SYMBOLS, DrillUnsupported,
    SysError, WouldBlock,
)

__all__ = ["LinuxTarget", "LinuxSockets", "run_linux", "KERNEL_IP", "SCRIPT_IP",
           "LINUX_TOLERANCE_US", "linux_unavailable_reason"]

KERNEL_IP = "198.18.0.1"      # the kernel under test: packetdrill's local address
SCRIPT_IP = "198.18.0.2"      # the script's end: packetdrill's remote address
LINUX_TOLERANCE_US = 25_000
ANY_WAIT_REAL_US = 10_000_000  # a '*' packet or an unmarked blocking call: at most 10 s

_libc = ctypes.CDLL(None, use_errno=True)
_TCP_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
               6: "TIME-WAIT", 7: "UNCONN", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
               11: "CLOSING", 12: "NEW-SYN-RECV"}
_TIMERS = {0: None, 1: "on", 2: "keepalive", 3: "timewait", 4: "persist"}


def linux_unavailable_reason() -> str | None:
    """None when this process can run the linux target (root, namespaces, TUN)."""
    from ustack.netns import tun_unavailable_reason
    if os.geteuid() != 0:
        return "needs root (a private network namespace and a TUN device)"
    return tun_unavailable_reason()


# --------------------------------------------------------------------------- sockets


class _LSock:
    __slots__ = ("sock", "nonblock", "write_done", "closer")

    def __init__(self, sock: socket.socket, nonblock: bool) -> None:
        self.sock = sock
        self.nonblock = nonblock
        self.write_done = 0
        self.closer: threading.Thread | None = None


class LinuxSockets:
    """The socket layer on real kernel sockets (non-blocking underneath)."""

    def __init__(self, kernel_ip: str, script_ip: str) -> None:
        self.kernel_ip = kernel_ip
        self.script_ip = script_ip
        self.socks: dict[int, _LSock] = {}
        self.notes: set[str] = set()
        self._closers: list[threading.Thread] = []

    def _get(self, fd: int) -> _LSock:
        s = self.socks.get(fd)
        if s is None:
            raise SysError(_errno.EBADF)
        return s

    @staticmethod
    def _oserror(e: OSError) -> SysError:
        return SysError(e.errno or _errno.EIO)

    def socket(self, domain: int, type_: int, proto: int) -> int:
        if domain not in (SYMBOLS["AF_INET"], SYMBOLS["AF_INET6"]):
            raise SysError(_errno.EAFNOSUPPORT)
        if type_ & 0xF != SYMBOLS["SOCK_STREAM"]:
            raise DrillUnsupported("only SOCK_STREAM (TCP) sockets are supported")
        try:
            so = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        except OSError as e:
            raise self._oserror(e)
        so.setblocking(False)
        self.socks[so.fileno()] = _LSock(so, bool(type_ & SOCK_NONBLOCK))
        return so.fileno()

    def bind(self, fd: int, port: int) -> int:
        s = self._get(fd)
        try:
            s.sock.bind((self.kernel_ip, port))
        except OSError as e:
            raise self._oserror(e)
        return 0

    def listen(self, fd: int, backlog: int) -> int:
        s = self._get(fd)
        try:
            s.sock.listen(backlog)
        except OSError as e:
            raise self._oserror(e)
        return 0

    def accept(self, fd: int) -> int:
        s = self._get(fd)

        def attempt() -> int:
            try:
                c, _addr = s.sock.accept()
            except (BlockingIOError, InterruptedError):
                if s.nonblock:
                    raise SysError(_errno.EAGAIN)
                raise WouldBlock(attempt, wait_fd=fd, wait_events=POLLIN)
            except OSError as e:
                raise self._oserror(e)
            c.setblocking(False)
            self.socks[c.fileno()] = _LSock(c, False)   # accept() does not pass O_NONBLOCK
            return c.fileno()
        return attempt()

    def connect(self, fd: int, port: int | None) -> int:
        s = self._get(fd)
        if port is None:
            # connect(AF_UNSPEC): sockaddr with family 0 (tcp_disconnect)
            addr = struct.pack("=H14x", 0)
            if _libc.connect(fd, addr, len(addr)) != 0:
                raise SysError(ctypes.get_errno())
            return 0
        err = s.sock.connect_ex((self.script_ip, port))
        if err == 0:
            return 0
        if err != _errno.EINPROGRESS:
            raise SysError(err)
        if s.nonblock:
            raise SysError(_errno.EINPROGRESS)

        def wait() -> int:
            r, w, x = select.select([], [fd], [], 0)
            if not w:
                raise WouldBlock(wait, wait_fd=fd, wait_events=POLLOUT)
            e = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if e:
                raise SysError(e)
            return 0
        return wait()

    def recv(self, fd: int, n: int, flags: int) -> int:
        s = self._get(fd)

        def attempt() -> int:
            try:
                return len(s.sock.recv(n, flags))
            except (BlockingIOError, InterruptedError):
                if s.nonblock or flags & MSG_DONTWAIT:
                    raise SysError(_errno.EAGAIN)
                raise WouldBlock(attempt, wait_fd=fd, wait_events=POLLIN)
            except OSError as e:
                raise self._oserror(e)
        return attempt()

    def send(self, fd: int, n: int, flags: int) -> int:
        s = self._get(fd)
        s.write_done = 0
        msg_nosignal = SYMBOLS["MSG_NOSIGNAL"]

        def attempt() -> int:
            want = n - s.write_done
            try:
                if want > 0 or n == 0:
                    s.write_done += s.sock.send(bytes(want), flags | msg_nosignal)
            except (BlockingIOError, InterruptedError):
                if s.nonblock or flags & MSG_DONTWAIT:
                    if s.write_done:
                        return s.write_done
                    raise SysError(_errno.EAGAIN)
                raise WouldBlock(attempt, wait_fd=fd, wait_events=POLLOUT)
            except OSError as e:
                if s.write_done:
                    return s.write_done
                raise self._oserror(e)
            if s.write_done >= n:
                return n
            if s.nonblock or flags & MSG_DONTWAIT:
                return s.write_done
            raise WouldBlock(attempt, wait_fd=fd, wait_events=POLLOUT)
        return attempt()

    def close(self, fd: int) -> int:
        s = self.socks.pop(fd, None)
        if s is None:
            raise SysError(_errno.EBADF)
        onoff, secs = struct.unpack("ii", s.sock.getsockopt(socket.SOL_SOCKET,
                                                            socket.SO_LINGER, 8))
        if onoff and secs > 0 and not s.nonblock:
            # close() sleeps up to the linger time (tcp_close: sk_stream_wait_close) even on
            # a non-blocking socket: do it on a helper thread while the script goes on.
            t = threading.Thread(target=s.sock.close, name=f"drill-close-{fd}", daemon=True)
            t.start()
            self._closers.append(t)

            def wait() -> int:
                if t.is_alive():
                    raise WouldBlock(wait)
                return 0
            return wait()
        s.sock.close()
        return 0

    def shutdown(self, fd: int, how: int) -> int:
        s = self._get(fd)
        try:
            s.sock.shutdown(how)
        except OSError as e:
            raise self._oserror(e)
        return 0

    def setsockopt(self, fd: int, level: int, name: int, value: Any, optlen: int) -> int:
        s = self._get(fd)
        if isinstance(value, tuple):
            raw = struct.pack("ii", *value)[:max(0, optlen)]
        elif isinstance(value, bytes):
            raw = value
        else:
            raw = struct.pack("I", value & 0xFFFFFFFF)[:max(0, optlen)]
        try:
            s.sock.setsockopt(level, name, raw)
        except OSError as e:
            raise self._oserror(e)
        return 0

    def getsockopt(self, fd: int, level: int, name: int, shape: str, optlen: int) -> Any:
        s = self._get(fd)
        try:
            if shape == "linger":
                return struct.unpack("ii", s.sock.getsockopt(level, name, 8))
            if shape == "string":
                return s.sock.getsockopt(level, name, max(optlen, 64)).rstrip(b"\0")
            raw = s.sock.getsockopt(level, name, max(optlen, 4))
        except OSError as e:
            raise self._oserror(e)
        return struct.unpack("i", raw[:4].ljust(4, b"\0"))[0]

    def fcntl(self, fd: int, cmd: int, arg: int) -> int:
        s = self._get(fd)
        try:
            if cmd == SYMBOLS["F_GETFL"]:
                real = _fcntl.fcntl(fd, _fcntl.F_GETFL)
                return (real & ~O_NONBLOCK) | (O_NONBLOCK if s.nonblock else 0)
            if cmd == SYMBOLS["F_SETFL"]:
                _fcntl.fcntl(fd, _fcntl.F_SETFL, arg | O_NONBLOCK)
                s.nonblock = bool(arg & O_NONBLOCK)
                return 0
            return _fcntl.fcntl(fd, cmd, arg)
        except OSError as e:
            raise self._oserror(e)

    def ioctl(self, fd: int, request: int) -> int:
        self._get(fd)
        if request == SYMBOLS["FIONBIO"]:
            raise DrillUnsupported("ioctl FIONBIO (use fcntl O_NONBLOCK)")
        try:
            raw = _fcntl.ioctl(fd, request, b"\0" * 4)
        except OSError as e:
            raise self._oserror(e)
        return struct.unpack("i", raw)[0]

    def poll(self, fds: list[tuple[int, int]]) -> list[int]:
        out = []
        for fd, events in fds:
            if fd not in self.socks:
                out.append(SYMBOLS["POLLNVAL"])
                continue
            p = select.poll()
            p.register(fd, events)
            r = p.poll(0)
            out.append(r[0][1] if r else 0)
        return out

    def close_all(self) -> None:
        for s in list(self.socks.values()):
            try:
                s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            s.sock.close()
        self.socks.clear()
        for t in self._closers:
            t.join(timeout=5)


# --------------------------------------------------------------------------- the target


class LinuxTarget(Target):
    """The kernel in a private namespace behind a TUN device, in real time."""

    name = "linux"
    min_tolerance_us = LINUX_TOLERANCE_US
    max_wait_us = ANY_WAIT_REAL_US
    local_ip = KERNEL_IP
    remote_ip = SCRIPT_IP

    def __init__(self) -> None:
        super().__init__()
        self._ns: Any = None
        self._dev: Any = None
        self._fd = -1
        self._t0 = 0
        self.sockets = LinuxSockets(KERNEL_IP, SCRIPT_IP)
        self._root_sysctl: dict[str, str | None] = {}

    # -- lifecycle
    def start(self, script: A.Script) -> None:
        from ustack.netns import Netns, setup_tun
        # What the root namespace has (read only, before leaving it): tells host-wide
        # settings from unknown ones.
        self._root_sysctl = {}
        for name in _sysctl_names(script):
            self._root_sysctl[name] = _read_proc_sys(name)
        mtu = script.config.mtu or 1500
        self._ns = Netns()
        self._ns.__enter__()
        try:
            self._dev = setup_tun("tun0", f"{KERNEL_IP}/24", mtu)
        except BaseException:
            self._ns.__exit__(None, None, None)
            self._ns = None
            raise
        self._fd = self._dev.fileno()
        self._t0 = time.monotonic_ns()

    def close(self) -> None:
        try:
            self.sockets.close_all()
        finally:
            if self._dev is not None:
                self._dev.close()
                self._dev = None
            if self._ns is not None:
                self._ns.__exit__(None, None, None)
                self._ns = None

    def socket_layer(self) -> Any:
        return self.sockets

    def counters(self) -> dict[str, int]:
        """The namespace's MIB, as nstat names it: /proc/net/snmp and /proc/net/netstat are
        pairs of lines, "Prefix: names" then "Prefix: values" ("TcpExt" + "TCPHPHits")."""
        out: dict[str, int] = {}
        for name in ("snmp", "netstat"):
            # this thread is in the run's namespace; /proc/self would be the process's
            with open(f"/proc/thread-self/net/{name}") as f:
                lines = f.read().splitlines()
            for head, values in zip(lines[::2], lines[1::2]):
                prefix, names = head.split(":", 1)
                for k, v in zip(names.split(), values.split(":", 1)[1].split()):
                    if int(v):
                        out[prefix + k] = int(v)
        return out

    # -- clock and link
    def now(self) -> int:
        return (time.monotonic_ns() - self._t0) // 1000

    def _read(self) -> bool:
        got = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return got
            except OSError as e:
                if e.errno == _errno.EAGAIN:
                    return got
                raise
            if data:
                self.outq.append((self.now(), data))
                got = True

    def run_until(self, deadline: int | None, ready: Callable[[], bool],
                  wake: tuple[int, int] | None = None, poll_us: int | None = None) -> bool:
        self._read()
        if ready():
            return True
        if deadline is None:
            deadline = self.now() + ANY_WAIT_REAL_US
        while True:
            now = self.now()
            if now >= deadline:
                self._read()
                return ready()
            timeout = deadline - now
            if poll_us is not None:
                timeout = min(timeout, poll_us)
            rl = [self._fd]
            wl: list[int] = []
            if wake is not None:
                if wake[1] & POLLIN:
                    rl.append(wake[0])
                if wake[1] & POLLOUT:
                    wl.append(wake[0])
            try:
                select.select(rl, wl, [], timeout / 1e6)
            except (OSError, ValueError):
                time.sleep(min(timeout, 1000) / 1e6)
            self._read()
            if ready():
                return True

    def inject(self, packet: bytes) -> None:
        os.write(self._fd, packet)
        self._read()

    def settle(self) -> None:
        end = self.now() + 2000
        while self.now() < end:
            select.select([self._fd], [], [], (end - self.now()) / 1e6)
            self._read()

    # -- settings
    def set_sysctl(self, name: str, value: str, line: int, *, soft: bool = False,
                   where: str = "") -> None:
        key = _dotted(name)
        where = where or f"line {line}"
        if key.startswith("ustack."):
            msg = (f"sysctl {key} is a ustack setting; Linux has none (tag the script "
                   "'// ustack-only: ...')")
            if soft:
                self.warnings.append(f"{where}: {msg}")
                return
            raise ScriptFailure(Failure(line, "", msg, kind="unsupported"))
        try:
            self._ns.sysctl(key, value)
            return
        except FileNotFoundError:
            root = self._root_sysctl.get(key)
            if root is None:
                self.warnings.append(f"{where}: this kernel has no sysctl {key} (the script "
                                     f"sets it to {value}): ignored")
                return
            why = "host-wide (only the root namespace has it)"
        except PermissionError:
            root = self._root_sysctl.get(key) or _read_proc_sys(key)
            why = "refused in a network namespace (read-only there, or a value only the " \
                  "root namespace may set)"
        except ValueError as e:
            if soft:
                self.warnings.append(f"{where}: {e}")
                return
            raise ScriptFailure(Failure(line, "", str(e), kind="error"))
        self._host_wide(key, value, root, line, why, soft, where)

    def _host_wide(self, key: str, value: str, root: str | None, line: int, why: str,
                   soft: bool, where: str) -> None:
        if root is not None and root.split() == str(value).split():
            self.notes.append(f"{where}: sysctl {key} is {why}; the host already has {value}")
            return
        msg = (f"sysctl {key}={value} is {why}: drill never changes the host's settings (the "
               f"host has {root})")
        if soft:
            self.warnings.append(f"{where}: {msg}; running with the host's value")
            return
        raise ScriptFailure(Failure(line, "", msg + ", so the linux target cannot run this "
                                    "script as written", kind="unsupported"))

    # -- state
    def state_lines(self) -> list[str]:
        if self._ns is None:
            return []
        try:
            with open("/proc/thread-self/net/tcp") as f:
                lines = f.read().splitlines()[1:]
        except OSError as e:
            return [f"(cannot read /proc/thread-self/net/tcp: {e})"]
        out = []
        for ln in lines:
            p = ln.split()
            if len(p) < 10:
                continue
            local, rem, st = p[1], p[2], int(p[3], 16)
            txq, rxq = (int(x, 16) for x in p[4].split(":"))
            tr, when = p[5].split(":")
            retr = int(p[6], 16)
            state = _TCP_STATES.get(st, str(st))
            text = f"{state:<11} {rxq:<6} {txq:<6} {_addr(local):<21} {_addr(rem):<21}"
            timer = _TIMERS.get(int(tr, 16))
            if timer:
                text += f" timer:({timer},{int(when, 16) * 10}ms,{retr})"
            out.append(text)
        return out or ["(no sockets)"]


def _addr(hexaddr: str) -> str:
    ip, port = hexaddr.split(":")
    a = socket.inet_ntoa(struct.pack("<I", int(ip, 16)))
    p = int(port, 16)
    return f"{a}:{p}" if p else f"{a}:*"


def _dotted(name: str) -> str:
    name = name.strip()
    if name.startswith("/proc/sys/"):
        name = name[len("/proc/sys/"):]
    return name.strip("/").replace("/", ".")


def _read_proc_sys(name: str) -> str | None:
    try:
        with open("/proc/sys/" + _dotted(name).replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def _sysctl_names(script: A.Script) -> list[str]:
    """Every sysctl the script (and the shell files it runs) may set, dotted."""
    names: list[str] = []
    blocks = [script.init_command] + [e.action for e in script.events
                                      if isinstance(e.action, A.ShellBlock)]
    from .parser import parse_shell
    from .run_ustack import resolve_script_file

    def walk(cmds: tuple[A.ShellCmd, ...], depth: int) -> None:
        for c in cmds:
            if isinstance(c, A.SysctlSet):
                names.append(_dotted(c.name))
            elif isinstance(c, A.RunScript) and depth < 4:
                path = resolve_script_file(c.path, script.path)
                if path is not None:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        walk(parse_shell(f.read(), 1, script.defines), depth + 1)
    for b in blocks:
        if b is not None:
            walk(b.commands, 0)
    return names


# --------------------------------------------------------------------------- API


def run_linux(script: A.Script | str, *, tolerance_us: int | None = None,
              strict_end: bool = False, verbose: bool = False,
              log: Callable[[str], None] | None = None,
              defines: dict[str, str] | None = None) -> RunResult:
    """Run a script (parsed, or a path) against the kernel in a private namespace.  Runs on
    the calling thread (which visits the namespace and comes back)."""
    script = load_script(script, "linux", defines)
    if isinstance(script, RunResult):
        return script
    reason = linux_unavailable_reason()
    if reason:
        return RunResult(script.path, "linux", False,
                         Failure(0, "", f"cannot run the linux target: {reason}",
                                 kind="error"))
    return Runner(script, LinuxTarget(), tolerance_us=tolerance_us, strict_end=strict_end,
                  verbose=verbose, log=log).run()
