"""Run a packetdrill script: the event loop both targets share, and the ustack target.

:class:`Runner` is packetdrill's run.c / run_packet.c / run_system_call.c loop, written once:

* **Time.**  Event times are script microseconds from the first event (which must be at 0).
  A relative time ``+t`` counts from *now* when the event starts (after the previous event
  finished), except that consecutive inbound packets count from the previous one's script
  time (packetdrill's anchoring).  An inbound packet or a system call waits until its time
  and fails if it starts later than time + tolerance.  An outbound packet is sniffed at once
  and its time must fall in [start - tol, end + tol].  The tolerance is ``--tolerance_usecs``
  or ``tolerance_percent`` of the time since the previous event, whichever is larger.
* **Outbound packets.**  Sniffing takes the oldest packet the stack sent that belongs to the
  socket under test (others are dropped, as packetdrill's sniffer drops them); it must match
  the script line (:meth:`ustack.drill.seqmap.SeqMapper.match_outbound`).  So an *extra*
  packet between two events fails the next ``>`` line, exactly as in packetdrill.  A packet
  that does not come by its time + tolerance fails as missing (packetdrill would wait).
  Packets left over after the last event: packetdrill does not look at them; the runner
  reports them as a warning, and as a failure with ``strict_end=True`` (our corpus).
* **System calls.**  A call marked blocking (``+0...0.1 read(...)``) that would sleep
  becomes *pending*: the script goes on, and the call completes when the world lets it
  (its end time is then checked).  A call not so marked that would sleep blocks the script
  (packetdrill's main thread) until it completes.  A call after a pending one first waits
  for it (up to 1 s, then fails as packetdrill does).

* **Shell lines.**  ``sysctl`` settings (also written ``echo v > /proc/sys/...`` or
  ``set_sysctls.py``) are applied to the target; device set-up (``tc``, ``ip``, ``ethtool``)
  is skipped with a note; a line that runs a shell file (``../common/defaults.sh``, found
  next to the script or in the current directory) is read the same way, where a setting
  that fails is only a warning (the file would go on).  Any other command is refused,
  naming it.  ``%{ }%`` code blocks are skipped and counted; the cleanup command is not
  run (every run has its own stack).
* **Inbound packets** are built with their options in the script's order (packetdrill
  sends them bit for bit), IPv4 + TCP checksums filled in; inbound ICMP errors quote the
  stack's header as packetdrill builds them.

A *target* supplies the clock, the link and a socket layer.  :class:`UstackTarget` here
runs a :class:`ustack.host.Host` under virtual time (a blocking call or a ``+60`` wait
costs nothing); ``run_linux.LinuxTarget`` runs the real kernel in a private namespace.

Addresses: the stack under test is 198.18.0.2 and the script's remote end 198.18.0.1 (the
packetdrill ``--local_ip``/``--remote_ip`` options are not used: packets in scripts carry
no addresses, and all traffic stays inside 198.18.0.0/15).
"""
from __future__ import annotations

import os
import re
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ustack._segment import internet_checksum
from ustack.counters import Counters
from ustack.wire import GsoPacket, describe, gso_segment, ip_to_int, parse

from . import ast as A
from .parser import DrillSyntaxError, parse_file, parse_shell
from .seqmap import InboundIcmp, InboundTcp, SeqMapError, SeqMapper
from .sockets import (
    CORE_GAPS, DrillUnsupported, Outcome, SyscallDispatcher, UstackSockets, WouldBlock,
    errno_name, eval_int, strerror,
)

__all__ = [
    "Runner", "Target", "UstackTarget", "RunResult", "Failure", "ScriptTags", "read_tags",
    "run_ustack", "build_tcp_packet", "build_icmp_packet", "LOCAL_IP", "REMOTE_IP",
]

LOCAL_IP = "198.18.0.2"     # ustack, the stack under test
REMOTE_IP = "198.18.0.1"    # the script's end
BLOCK_WAIT_US = 1_000_000   # packetdrill's await_idle_thread: 1 s


# --------------------------------------------------------------------------- results


@dataclass
class Failure:
    """Why a script failed, where: the line, what the script expected, what came instead."""
    line: int
    text: str                     # the script line
    message: str                  # expected vs got
    actual: list[str] = field(default_factory=list)   # decoded live packets
    state: list[str] = field(default_factory=list)    # the connections, ss-style
    kind: str = "fail"            # "fail", "unsupported", "error"

    def render(self, indent: str = "    ") -> str:
        out = [f"line {self.line}: {self.message}"]
        if self.text:
            out.append(f"script:   {self.text.strip()}")
        for a in self.actual:
            out.append(f"got:      {a}")
        if self.state:
            out.append("state:")
            out += ["  " + s for s in self.state]
        return "\n".join(indent + line for line in out)


@dataclass
class RunResult:
    path: str
    target: str
    ok: bool
    failure: Failure | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    code_blocks_skipped: int = 0
    elapsed_s: float = 0.0          # real time
    script_s: float = 0.0           # script time at the end (virtual on ustack)
    trace: list[str] = field(default_factory=list)
    # the stack's counters when the run ended, by nstat's names (TcpExtTCPHPHits...): the
    # ustack host's, or the kernel's in the run's namespace (/proc/net/snmp and netstat)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "PASS" if self.ok else "FAIL"


class ScriptFailure(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(frozen=True)
class ScriptTags:
    """Header tags of a corpus script (``// ustack-only: reason`` ...)."""
    ustack_only: str | None = None
    linux_slow: str | None = None
    ustack_known_diff: str | None = None
    counters: str | None = None     # names whose end values must be equal on both targets

    @property
    def counter_names(self) -> list[str]:
        return self.counters.split() if self.counters else []


_TAG_RE = re.compile(
    r"^\s*//\s*(ustack-only|linux-slow|ustack-known-diff|counters)\s*:\s*(.*)$")


def read_tags(path: str) -> ScriptTags:
    vals: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _TAG_RE.match(line)
            if m:
                vals[m.group(1).replace("-", "_")] = m.group(2).strip() or "(no reason given)"
    return ScriptTags(**vals)


# --------------------------------------------------------------------------- packets


def _ipv4(src: int, dst: int, proto: int, payload: bytes, *, tos: int = 0,
          ttl: int = 64) -> bytes:
    hdr = struct.pack("!BBHHHBBHII", 0x45, tos & 0xFF, 20 + len(payload), 0, 0x4000, ttl,
                      proto, 0, src, dst)
    csum = internet_checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def _option_bytes(opts: tuple[A.TcpOption, ...]) -> bytes:
    out = bytearray()
    for o in opts:
        if isinstance(o, A.OptNop):
            out.append(1)
        elif isinstance(o, A.OptEol):
            out.append(0)
        elif isinstance(o, A.OptMss):
            out += struct.pack("!BBH", 2, 4, o.value)
        elif isinstance(o, A.OptWscale):
            out += bytes([3, 3, o.shift or 0])
        elif isinstance(o, A.OptSackOk):
            out += b"\x04\x02"
        elif isinstance(o, A.OptSack):
            out += bytes([5, 2 + 8 * len(o.blocks)])
            for a, b in o.blocks:
                out += struct.pack("!II", a & 0xFFFFFFFF, b & 0xFFFFFFFF)
        elif isinstance(o, A.OptTimestamp):
            out += struct.pack("!BBII", 8, 10, o.val & 0xFFFFFFFF, o.ecr & 0xFFFFFFFF)
        elif isinstance(o, A.OptFastOpen):
            body = (b"\xf9\x89" if o.experimental else b"") + o.cookie
            out += bytes([254 if o.experimental else 34, 2 + len(body)]) + body
        elif isinstance(o, A.OptMd5):
            out += bytes([19, 18]) + o.digest.ljust(16, b"\0")
        else:
            raise DrillUnsupported(f"inbound TCP option {o.describe()!r}")
    while len(out) % 4:
        out.append(0)   # pad with EOL
    if len(out) > 40:
        raise DrillUnsupported(f"TCP options of {len(out)} bytes (at most 40 fit)")
    return bytes(out)


def build_tcp_packet(ib: InboundTcp) -> bytes:
    """IPv4 + TCP for an inbound script packet, options laid out exactly as the script wrote
    them (packetdrill sends them bit for bit), both checksums filled in."""
    opts = _option_bytes(ib.options)
    doff = (20 + len(opts)) // 4
    flags = ib.flags & 0xFF
    off_flags = (doff << 12) | (0x100 if ib.flags & A.TH_AE else 0) | flags
    tcp = struct.pack("!HHIIHHHH", ib.sport, ib.dport, ib.seq & 0xFFFFFFFF,
                      ib.ack & 0xFFFFFFFF, off_flags, ib.window & 0xFFFF, 0,
                      ib.urg_ptr & 0xFFFF) + opts + ib.payload
    src, dst = int(ib.src), int(ib.dst)
    pseudo = struct.pack("!IIBBH", src, dst, 0, 6, len(tcp))
    csum = internet_checksum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    return _ipv4(src, dst, 6, tcp, tos=ib.tos, ttl=ib.ttl or 64)


def build_icmp_packet(ic: InboundIcmp) -> bytes:
    """An ICMP error quoting one of the stack's packets (IPv4 header + 8 bytes)."""
    proto = {"tcp": 6, "udp": 17}.get(ic.protocol, 255)
    inner_len = 20 + (20 if proto == 6 else 8) + ic.echoed_payload_len
    quoted_ip = _ipv4(int(ic.echoed_src), int(ic.echoed_dst), proto, b"")
    quoted_ip = struct.pack("!BBH", 0x45, 0, inner_len) + quoted_ip[4:]
    quoted_ip = quoted_ip[:10] + b"\0\0" + quoted_ip[12:]
    quoted_ip = quoted_ip[:10] + struct.pack("!H", internet_checksum(quoted_ip)) + quoted_ip[12:]
    if proto == 6:
        head8 = struct.pack("!HHI", ic.echoed_sport, ic.echoed_dport, ic.echoed_seq & 0xFFFFFFFF)
    else:
        head8 = struct.pack("!HHHH", ic.echoed_sport, ic.echoed_dport,
                            8 + ic.echoed_payload_len, 0)
    rest = (struct.pack("!HH", 0, ic.mtu) if ic.mtu >= 0 else b"\0\0\0\0")
    if ic.icmp_type in (0, 8):
        rest = struct.pack("!HH", ic.echo_id, 0)
    body = struct.pack("!BBH", ic.icmp_type, ic.code, 0) + rest + quoted_ip + head8
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    return _ipv4(int(ic.src), int(ic.dst), 1, body, tos=ic.tos)


def resolve_script_file(name: str, script_path: str) -> str | None:
    """Where a backtick line's shell file is: relative to the script's directory (how
    packetdrill's test runners start it), else to the current directory; None if absent."""
    if "$" in name:
        return None
    if os.path.isabs(name):
        return name if os.path.isfile(name) else None
    for base in (os.path.dirname(os.path.abspath(script_path)), os.getcwd()):
        path = os.path.normpath(os.path.join(base, name))
        if os.path.isfile(path):
            return path
    return None


# --------------------------------------------------------------------------- targets


class Target:
    """The clock, the link and the sockets of one stack under test."""

    name = "?"
    min_tolerance_us = 0        # the script's --tolerance_usecs (default 4 ms) or at least this
    max_wait_us = 600_000_000   # '*' packets and unmarked blocking calls wait at most this
    local_ip = LOCAL_IP
    remote_ip = REMOTE_IP

    def __init__(self) -> None:
        self.outq: deque[tuple[int, bytes]] = deque()   # (script us, IPv4 packet) sent
        self.notes: list[str] = []
        self.warnings: list[str] = []

    # lifecycle
    def start(self, script: A.Script) -> None: ...
    def close(self) -> None: ...

    # clock and link
    def now(self) -> int:
        raise NotImplementedError

    def run_until(self, deadline: int | None, ready: Callable[[], bool],
                  wake: tuple[int, int] | None = None, poll_us: int | None = None) -> bool:
        """Let the world run until ``ready()`` (checked whenever something happened) or the
        clock reaches ``deadline`` (None: as long as anything can still happen).  Returns
        whether ``ready()`` became true.  ``wake``: an fd and poll events whose readiness is
        worth waking for; ``poll_us``: check ``ready()`` at least this often."""
        raise NotImplementedError

    def inject(self, packet: bytes) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        """Collect what the stack sent in response to the last action (real time: a moment)."""

    # settings
    def set_sysctl(self, name: str, value: str, line: int, *, soft: bool = False,
                   where: str = "") -> None:
        """Apply a sysctl line.  ``soft``: it comes from a shell file, so a failure is a
        warning (the file would go on) rather than the script's failure."""
        raise NotImplementedError

    def socket_layer(self) -> Any:
        raise NotImplementedError

    def state_lines(self) -> list[str]:
        return []

    def counters(self) -> dict[str, int]:
        """The stack's counters now, by nstat's names."""
        return {}



class UstackTarget(Target):
    """A ustack Host under virtual time; packets go straight in and out of it (memory)."""

    name = "ustack"
    min_tolerance_us = 0              # virtual time: exactly the script's tolerance
    BASE_MS = 100_000                 # the Host's clock at script time 0

    def __init__(self, *, seed: int = 1) -> None:
        super().__init__()
        from ustack.host import Host
        self._Host = Host
        self.seed = seed
        self.host: Any = None
        self._now_us = 0
        self.sockets: UstackSockets | None = None
        self._mtu = 1500

    def start(self, script: A.Script) -> None:
        mtu = script.config.mtu or 1500
        self._mtu = mtu
        self.host = self._Host(LOCAL_IP, mtu=mtu, secret=b"ustack drill", seed=self.seed,
                               now=self.BASE_MS)
        self.sockets = UstackSockets(self.host, ip_to_int(REMOTE_IP), self.now)
        # bursts as TSO super-segments, cut again on the way out (the offload path checked
        # against the same scripts)
        self.host.tso = os.environ.get("USTACK_DRILL_TSO", "") == "1"

    def socket_layer(self) -> Any:
        return self.sockets

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.host.mib.items() if v}

    def now(self) -> int:
        return self._now_us

    def _collect(self) -> None:
        out = self.host.take_output()
        for p in out:
            if type(p) is GsoPacket:
                # USTACK_DRILL_TSO=1: the device's cut, as the kernel makes it from ustack's
                # super-segments; the script must see the same segments as without TSO
                for piece in gso_segment(p):
                    self.outq.append((self._now_us, piece))
            else:
                self.outq.append((self._now_us, p))

    def _advance_to(self, t_us: int) -> None:
        if t_us > self._now_us:
            self._now_us = t_us
        self.host.advance(self.BASE_MS + self._now_us // 1000)
        self._collect()

    def run_until(self, deadline: int | None, ready: Callable[[], bool],
                  wake: tuple[int, int] | None = None, poll_us: int | None = None) -> bool:
        self._collect()
        if ready():
            return True
        spins = 0
        while True:
            nd = self.host.next_deadline()
            nd_us = None if nd is None else max((nd - self.BASE_MS) * 1000, self._now_us)
            if deadline is not None and (nd_us is None or nd_us > deadline):
                if deadline > self._now_us:
                    self._advance_to(deadline)
                return ready()
            if nd_us is None:
                return False          # nothing can happen any more
            before = self._now_us
            self._advance_to(nd_us)
            if ready():
                return True
            spins = spins + 1 if self._now_us == before else 0
            if spins > 10_000:
                raise RuntimeError("virtual clock stuck: a timer keeps firing at the same ms")

    def inject(self, packet: bytes) -> None:
        self.host.receive(packet)
        self._collect()

    def set_sysctl(self, name: str, value: str, line: int, *, soft: bool = False,
                   where: str = "") -> None:
        from ustack.sysctl import normalize
        key = normalize(name)
        where = where or f"line {line}"
        # Linux's proc_dointvec reads numbers with base 0 (0x70403 is fine); ustack's
        # Sysctl wants decimal: convert here.
        value = " ".join(str(int(v, 0)) if re.fullmatch(r"0[xX][0-9a-fA-F]+", v) else v
                         for v in str(value).split())
        try:
            self.host.sysctl[key] = value
        except KeyError:
            self.warnings.append(f"{where}: ustack has no setting {key} (the script sets it "
                                 f"to {value}): ignored")
        except ValueError as e:
            if soft:
                self.warnings.append(f"{where}: sysctl {key}={value} refused: {e}")
                return
            raise ScriptFailure(Failure(line, "", f"sysctl {key}={value}: {e}", kind="error"))

    def state_lines(self) -> list[str]:
        if self.host is None:
            return []
        return [str(c) for c in self.host.connections()] or ["(no connections)"]


# --------------------------------------------------------------------------- the runner


@dataclass
class _Pending:
    """A blocking system call in progress."""
    event: A.Event
    call: A.Syscall
    attempt: Callable[[], Outcome]
    start_us: int
    end_us: int | None            # the script's expected end (marked calls)
    marked: bool
    wait: WouldBlock


_OBSERVE_BEFORE = frozenset({"connect", "sendto", "sendmsg"})


def _anchored(ev: A.Event | None) -> bool:
    a = ev.action if ev is not None else None
    return isinstance(a, (A.TcpPacket, A.UdpPacket, A.IcmpPacket)) and a.direction == A.INBOUND


def _fmt_s(us: int) -> str:
    return f"{us / 1e6:.6f}"


class Runner:
    """Runs one parsed script against one target.  ``run()`` returns a :class:`RunResult`."""

    def __init__(self, script: A.Script, target: Target, *, tolerance_us: int | None = None,
                 strict_end: bool = False, verbose: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.script = script
        self.target = target
        cfg = script.config
        if tolerance_us is None:
            tolerance_us = max(cfg.tolerance_usecs, target.min_tolerance_us)
        self.tolerance_us = tolerance_us
        self.tolerance_pct = cfg.tolerance_percent
        self.strict_end = strict_end
        self.verbose = verbose
        self.log = log
        self.result = RunResult(script.path, target.name, ok=False)
        self.mapper: SeqMapper | None = None
        self.disp: SyscallDispatcher | None = None
        self.pending: _Pending | None = None
        self.last_event: A.Event | None = None
        self.last_time = 0                      # adjusted script time of the last event
        self.current: A.Event | None = None
        self.counters = Counters().values
        self.trace: deque[str] = deque(maxlen=400 if verbose else 40)
        self.non_fatal_packets = "packet" in cfg.non_fatal       # --non_fatal=packet,syscall
        self.non_fatal_syscalls = "syscall" in cfg.non_fatal
        self.script_warnings: list[str] = []

    # ------------------------------------------------------------------ helpers
    def _say(self, text: str) -> None:
        line = f"{_fmt_s(self.target.now())} {text}"
        self.trace.append(line)
        if self.verbose and self.log is not None:
            self.log(f"    [{self.target.name}] {line}")

    def _fail(self, message: str, *, event: A.Event | None = None,
              actual: list[str] | None = None, kind: str = "fail") -> ScriptFailure:
        ev = event or self.current
        line = ev.line if ev is not None else 0
        text = ev.text if ev is not None else ""
        return ScriptFailure(Failure(line, text, message, actual or [],
                                     self._state(), kind))

    def _state(self) -> list[str]:
        try:
            return self.target.state_lines()
        except Exception as e:  # noqa: BLE001 - best effort for a report
            return [f"(state unavailable: {e})"]

    def _tolerance(self, script_us: int) -> int:
        tol = self.tolerance_us
        if self.last_event is not None:
            dyn = int(self.tolerance_pct / 100.0 * (script_us - self.last_time))
            tol = max(tol, dyn)
        return tol

    def _parse(self, data: bytes) -> Any:
        return parse(data, self.counters)

    def _show(self, seg: Any) -> str:
        return describe(seg, addresses=True)

    # ------------------------------------------------------------------ entry
    def run(self) -> RunResult:
        res = self.result
        t0 = time.monotonic()
        started = False
        try:
            self._check_supported()
            self.target.start(self.script)
            started = True
            self._setup()
            self._init_command()
            for ev in self.script.events:
                self.current = ev
                self._event(ev)
                self.last_event = ev
            self.current = None
            self._finish()
            res.ok = True
        except ScriptFailure as f:
            res.failure = f.failure
        except DrillUnsupported as e:
            ev = self.current
            res.failure = Failure(ev.line if ev else 0, ev.text if ev else "",
                                  f"not supported: {e}", kind="unsupported")
        except SeqMapError as e:
            ev = self.current
            res.failure = Failure(ev.line if ev else 0, ev.text if ev else "", str(e),
                                  state=self._state())
        except Exception as e:  # noqa: BLE001 - a runner bug or a broken target: report it
            import traceback
            ev = self.current
            res.failure = Failure(ev.line if ev else 0, ev.text if ev else "",
                                  f"internal error: {type(e).__name__}: {e}", kind="error")
            self.trace.extend(traceback.format_exc().splitlines())
        finally:
            try:
                res.script_s = self.target.now() / 1e6 if started else 0.0
                res.counters = self.target.counters() if started else {}
            except Exception:  # noqa: BLE001
                pass
            try:
                self.target.close()
            finally:
                res.elapsed_s = time.monotonic() - t0
        sock = self.target.socket_layer() if started else None
        for key in sorted(getattr(sock, "notes", ()) or ()):
            # the script used something the ustack core does not do (fully): say so loudly
            res.warnings.append(f"ustack core gap: {CORE_GAPS[key]}")
        res.warnings = list(self.script_warnings) + self.target.warnings + res.warnings
        res.notes = self.target.notes + res.notes
        res.trace = list(self.trace)
        return res

    def _check_supported(self) -> None:
        s = self.script
        self.script_warnings = [str(w) for w in s.warnings]
        if s.config.ip_version == "ipv6":
            raise ScriptFailure(Failure(0, "", "not supported: --ip_version=ipv6 (the drill "
                                               "runners speak IPv4 only)", kind="unsupported"))
        if s.config.ip_version == "ipv4-mapped-ipv6":
            self.result.notes.append("--ip_version=ipv4-mapped-ipv6 runs as plain IPv4")
        cfg = s.config
        for name in ("local_ip", "remote_ip", "gateway_ip", "netmask_ip"):
            if getattr(cfg, name):
                self.result.notes.append(f"--{name}={getattr(cfg, name)} ignored: the runners "
                                         "use 198.18.0.0/15 addresses")
        for o in s.options:
            if o.name in ("wire_client", "wire_server", "so_filename", "wire_server_ip",
                          "wire_server_at"):
                raise ScriptFailure(Failure(o.line, "", f"not supported: --{o.name}",
                                            kind="unsupported"))
        for line, what in s.unsupported():
            ev = next((e for e in s.events if e.line == line), None)
            if what == "IcmpPacket" and ev is not None and \
                    isinstance(ev.action, A.IcmpPacket) and ev.action.direction == A.INBOUND:
                continue   # inbound ICMP errors are injected
            raise ScriptFailure(Failure(line, ev.text if ev else "", f"not supported: {what}",
                                        kind="unsupported"))
        if s.events and s.events[0].time.start_us != 0:
            ev = s.events[0]
            raise ScriptFailure(Failure(ev.line, ev.text, "first event should be at time 0",
                                        kind="error"))

    def _setup(self) -> None:
        t = self.target
        cfg = self.script.config
        self.mapper = SeqMapper.from_config(cfg, ip_to_int(t.local_ip), ip_to_int(t.remote_ip),
                                            tolerance_usecs=self.tolerance_us)
        self.disp = SyscallDispatcher(t.socket_layer(), t.now, bind_port=cfg.bind_port,
                                      connect_port=cfg.connect_port)

    # ------------------------------------------------------------------ shell
    def _init_command(self) -> None:
        for name in (self.script.config.init_scripts or "").split(","):
            if name.strip():   # --init_scripts=a.sh,b.sh: run before the script's own block
                self._run_script_file(A.RunScript(name.strip(), name.strip(), line=0), set(),
                                      f"--init_scripts {name.strip()}")
        if self.script.init_command is not None:
            self._shell(self.script.init_command, files_seen=set())
        if self.script.cleanup_command is not None:
            self.result.notes.append(f"line {self.script.cleanup_command.line}: the cleanup "
                                     "command is not run (each run has its own namespace)")

    def _shell(self, block: A.ShellBlock, files_seen: set[str], *, from_file: str | None = None,
               origin: int = 0) -> None:
        for cmd in block.commands:
            self._shell_cmd(cmd, files_seen, from_file, origin or cmd.line)

    def _shell_cmd(self, cmd: A.ShellCmd, files_seen: set[str], from_file: str | None,
                   origin: int) -> None:
        where = f"{from_file}:{cmd.line}" if from_file else f"line {cmd.line}"
        if isinstance(cmd, A.SysctlSet):
            # A line of a shell file behaves as in packetdrill: a sysctl that fails is
            # reported and the file goes on.  The script's own lines must work.
            self.target.set_sysctl(cmd.name, cmd.value, origin, soft=from_file is not None,
                                   where=where)
        elif isinstance(cmd, A.DeviceSetup):
            self.result.notes.append(f"{where}: device set-up skipped: {cmd.text.strip()}")
        elif isinstance(cmd, A.RunScript):
            self._run_script_file(cmd, files_seen, where, origin)
        else:
            text = cmd.text.strip()
            if from_file is not None:
                self.result.warnings.append(f"{where}: shell command not run: {text}")
                return
            raise ScriptFailure(Failure(
                cmd.line, f"`{text}`", f"shell command not supported: `{text}` (the drill "
                "runners apply sysctl settings and skip device set-up; other commands are "
                "refused)", kind="unsupported"))

    def _run_script_file(self, cmd: A.RunScript, files_seen: set[str], where: str,
                         origin: int = 0) -> None:
        path = resolve_script_file(cmd.path, self.script.path)
        if path is None:
            self.result.warnings.append(f"{where}: shell script {cmd.path} not found: skipped")
            return
        if path in files_seen or len(files_seen) > 8:
            return
        files_seen.add(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        cmds = parse_shell(text, 1, self.script.defines)
        self.result.notes.append(f"{where}: read {cmd.path} (sysctl lines applied)")
        self._shell(A.ShellBlock(text, cmds, line=cmd.line), files_seen,
                    from_file=cmd.path, origin=origin or cmd.line)

    # ------------------------------------------------------------------ events
    def _times(self, ev: A.Event) -> tuple[int, int | None, int]:
        """(start, end, offset) in script us after packetdrill's relative adjustment."""
        tm = ev.time
        if tm.kind in (A.TimeKind.ABSOLUTE, A.TimeKind.ABSOLUTE_RANGE):
            if self.last_event is not None and \
                    self.last_event.time.kind in (A.TimeKind.ABSOLUTE,
                                                  A.TimeKind.ABSOLUTE_RANGE) and \
                    tm.start_us < self.last_event.time.start_us:
                raise self._fail(f"time goes backward in script from "
                                 f"{self.last_event.time.start_us} usec to {tm.start_us} usec",
                                 kind="error")
            return tm.start_us, tm.end_us, 0
        if self.last_event is not None and _anchored(self.last_event) and _anchored(ev):
            offset = self.last_time
        else:
            offset = self.target.now()
        start = offset + tm.start_us
        end = offset + tm.end_us if tm.end_us is not None else None
        return start, end, offset

    def _event(self, ev: A.Event) -> None:
        start, end, offset = self._times(ev)
        a = ev.action
        if isinstance(a, A.TcpPacket) and a.direction == A.OUTBOUND:
            self._outbound(ev, a, start, end)
        elif isinstance(a, (A.TcpPacket, A.IcmpPacket)) and a.direction == A.INBOUND:
            self._wait_for(start, ev)
            self._inbound(ev, a)
        elif isinstance(a, A.Syscall):
            self._syscall(ev, a, start, offset)
        elif isinstance(a, A.ShellBlock):
            self._wait_for(start, ev)
            self._shell(a, files_seen=set())
        elif isinstance(a, A.CodeBlock):
            self.result.code_blocks_skipped += 1
            self.result.warnings.append(f"line {ev.line}: %{{ }}% code block skipped")
        else:
            raise DrillUnsupported(f"{type(a).__name__} events")
        self.last_time = start

    # -- waiting
    def _run_until(self, deadline: int | None, cond: Callable[[], bool]) -> bool:
        """run_until with the pending call serviced at every step."""
        def ready() -> bool:
            self._service_pending()
            return cond()
        while True:
            p = self.pending
            d = deadline
            wake = None
            poll_us = None
            if p is not None:
                if p.wait.deadline_us is not None and (d is None or p.wait.deadline_us < d):
                    d = p.wait.deadline_us
                if p.wait.wait_fd is not None:
                    wake = (p.wait.wait_fd, p.wait.wait_events)
                else:
                    poll_us = 1000
            got = self.target.run_until(d, ready, wake, poll_us)
            if got:
                return True
            if d == deadline:
                return False
            if self.pending is p:   # its own deadline came first: finish it, then go on
                self._service_pending()

    def _wait_for(self, start: int, ev: A.Event) -> None:
        """wait_for_event(): run until the event's time; fail if we are already late."""
        if self.target.now() < start:
            self._run_until(start, lambda: False)
        now = self.target.now()
        tol = self._tolerance(start)
        if now > start + tol:
            kind = "system call start" if isinstance(ev.action, A.Syscall) else \
                "inbound packet" if isinstance(ev.action, (A.TcpPacket, A.IcmpPacket)) \
                else "command"
            raise self._fail(f"timing error: expected {kind} at {_fmt_s(start)} sec but "
                             f"happened at {_fmt_s(now)} sec; tolerance {_fmt_s(tol)} sec")

    # -- inbound
    def _inbound(self, ev: A.Event, pkt: A.TcpPacket | A.IcmpPacket) -> None:
        assert self.mapper is not None
        try:
            if isinstance(pkt, A.TcpPacket):
                ib = self.mapper.inbound(pkt)
                data = build_tcp_packet(ib)
            else:
                data = build_icmp_packet(self.mapper.inbound_icmp(pkt))
        except SeqMapError as e:
            raise self._fail(str(e))
        self._say(f"< {ev.text.strip()}   [{self._show(self._parse(data))}]"
                  if isinstance(pkt, A.TcpPacket) else f"< {ev.text.strip()}")
        self.target.inject(data)
        self._service_pending()

    # -- outbound
    def _next_owned(self) -> tuple[int, Any] | None:
        """The oldest sent packet of the socket under test; others are dropped (packetdrill's
        sniffer ignores packets of other sockets)."""
        q = self.target.outq
        assert self.mapper is not None
        while q:
            t, data = q[0]
            seg = self._parse(data)
            if seg is not None and self.mapper.owns(seg):
                return t, seg
            q.popleft()
            self._say(f"  (ignored: {self._show(seg) if seg is not None else 'non-TCP packet'})")
        return None

    def _outbound(self, ev: A.Event, pkt: A.TcpPacket, start: int, end: int | None) -> None:
        assert self.mapper is not None
        any_time = ev.time.kind == A.TimeKind.ANY
        tol = self._tolerance(start)
        if any_time:
            deadline: int | None = self.target.now() + self.target.max_wait_us
        else:
            deadline = (end if end is not None else start) + tol
        got = self._run_until(deadline, lambda: self._next_owned() is not None)
        if not got:
            when = "at any time" if any_time else (
                f"in time range {_fmt_s(start)}~{_fmt_s(end)} sec" if end is not None
                else f"at {_fmt_s(start)} sec")
            raise self._fail(f"missing outbound packet: expected it {when} (tolerance "
                             f"{_fmt_s(tol)} sec); nothing was sent by "
                             f"{_fmt_s(self.target.now())} sec",
                             actual=["(nothing)"])
        first = self._next_owned()
        assert first is not None
        t_first, seg = first
        self.target.outq.popleft()
        segs = [seg]
        total = len(seg.payload)
        if total < pkt.payload_len and not self.script.config.strict_segments:
            # aggregate consecutive segments of one TSO-sized script packet
            while total < pkt.payload_len:
                if not self._run_until(deadline, lambda: self._next_owned() is not None):
                    break
                nxt = self._next_owned()
                assert nxt is not None
                if len(nxt[1].payload) == 0:
                    break
                self.target.outq.popleft()
                segs.append(nxt[1])
                total += len(nxt[1].payload)
        err = self.mapper.match_outbound(pkt, segs if len(segs) > 1 else segs[0],
                                         tolerance_usecs=self.tolerance_us)
        shown = [self._show(s) for s in segs]
        self._say(f"> {ev.text.strip()}   [{'; '.join(shown)}]")
        if err is None and not any_time:
            lo = start - tol
            hi = (end if end is not None else start) + tol
            if not lo <= t_first <= hi:
                if end is not None:
                    err = (f"timing error: expected outbound packet in time range "
                           f"{_fmt_s(start)}~{_fmt_s(end)} sec but happened at "
                           f"{_fmt_s(t_first)} sec")
                else:
                    err = (f"timing error: expected outbound packet at {_fmt_s(start)} sec but "
                           f"happened at {_fmt_s(t_first)} sec; tolerance {_fmt_s(tol)} sec")
        if err is not None:
            if self.non_fatal_packets:
                self.result.warnings.append(f"line {ev.line}: {err} (non-fatal)")
                return
            raise self._fail(err, actual=[f"{s}   (sent at {_fmt_s(t_first)} sec)"
                                          for s in shown])

    # -- system calls
    def _syscall(self, ev: A.Event, call: A.Syscall, start: int, offset: int) -> None:
        assert self.disp is not None
        if self.pending is not None:
            # await_idle_thread(): the previous blocking call must finish first (1 s)
            limit = self.target.now() + BLOCK_WAIT_US
            if not self._run_until(limit, lambda: self.pending is None):
                p = self.pending
                raise self._fail(f"blocking system call while another blocking system call "
                                 f"(line {p.event.line}) is already in progress")
        self._wait_for(start, ev)
        end_us = None
        if call.end_us is not None:
            end_us = call.end_us + (offset if ev.time.kind == A.TimeKind.RELATIVE else 0)
        if call.name in _OBSERVE_BEFORE:
            # packetdrill marks the socket connecting before the call runs (its SYN is the
            # socket's even while a blocking connect() is still in progress)
            try:
                self.mapper.observe_syscall(call)
            except SeqMapError as e:
                raise self._fail(str(e), event=ev)
        attempt = self.disp.start(call)
        begin = self.target.now()
        self._say(f"  {ev.text.strip()}")
        try:
            outcome = attempt()
        except WouldBlock as wb:
            self.pending = _Pending(ev, call, attempt, begin, end_us, call.blocking, wb)
            if call.blocking:
                return
            # not marked blocking: the script's thread sleeps until the call returns
            if not self._run_until(self.target.now() + self.target.max_wait_us,
                                   lambda: self.pending is None):
                self.pending = None
                raise self._fail(f"{call.name}() blocked and nothing woke it: the script does "
                                 f"not mark it blocking (write '+t...end {call.name}(...)') and "
                                 f"the call never returns")
            return
        self._complete(ev, call, outcome, begin, end_us)

    def _service_pending(self) -> None:
        p = self.pending
        if p is None:
            return
        assert self.disp is not None
        now = self.target.now()
        if p.wait.deadline_us is not None and now >= p.wait.deadline_us:
            outcome = self.disp.finish(p.call, p.wait.timeout_result)
        else:
            try:
                outcome = p.attempt()
            except WouldBlock as wb:
                p.wait = wb
                return
        self.pending = None
        self._complete(p.event, p.call, outcome, p.start_us, p.end_us if p.marked else None,
                       blocked=True)

    def _complete(self, ev: A.Event, call: A.Syscall, outcome: Outcome, begin: int,
                  end_us: int | None, *, blocked: bool = False) -> None:
        assert self.mapper is not None
        problems = list(outcome.problems)
        exp = call.result
        now = self.target.now()
        got = outcome.show()
        self._say(f"  {call.name}() = {got}" + (" (returned after blocking)" if blocked else ""))
        if not isinstance(exp, A.EllipsisExpr):
            want = eval_int(exp, "the expected result")
            if call.name in ("socket", "accept") and want >= 0:
                if outcome.result < 0:
                    problems.insert(0, f"expected result {want} but got {got}")
            elif outcome.result != want:
                problems.insert(0, f"expected result {want}"
                                + (f" {call.errno}" if call.errno else "")
                                + f" but got {got}")
            elif want == -1 and call.errno is not None and outcome.errno is not None and \
                    errno_name(outcome.errno) != call.errno:
                exp_code = eval_int(A.Symbol(call.errno), "errno") \
                    if call.errno.startswith("E") else None
                if exp_code != outcome.errno:
                    problems.insert(0, f"expected errno {call.errno} but got "
                                       f"{errno_name(outcome.errno)} "
                                       f"({strerror(outcome.errno)})")
        if end_us is not None and not problems:
            # the end of a blocking call (verify_time with the call's own duration)
            tol = max(self.tolerance_us,
                      int(self.tolerance_pct / 100.0 * max(0, end_us - ev.time.start_us)))
            if not end_us - tol <= now <= end_us + tol:
                problems.append(f"timing error: expected system call return at "
                                f"{_fmt_s(end_us)} sec but happened at {_fmt_s(now)} sec; "
                                f"tolerance {_fmt_s(tol)} sec")
        if problems:
            if self.non_fatal_syscalls:
                self.result.warnings.append(f"line {ev.line}: {'; '.join(problems)} "
                                            "(non-fatal)")
            else:
                raise self._fail("; ".join(problems), event=ev)
        if outcome.result >= 0 and call.name not in _OBSERVE_BEFORE:
            try:
                self.mapper.observe_syscall(call)
            except SeqMapError as e:
                raise self._fail(str(e), event=ev)

    # ------------------------------------------------------------------ end
    def _finish(self) -> None:
        p = self.pending
        if p is not None:
            limit = (p.end_us + self.tolerance_us) if p.end_us is not None else \
                self.target.now() + BLOCK_WAIT_US
            limit = max(limit, self.target.now())
            self._run_until(limit, lambda: self.pending is None)
            if self.pending is not None:
                raise self._fail("runtime error: the script ended while a blocking system "
                                 "call was in progress", event=p.event)
        self.target.settle()
        assert self.mapper is not None
        left = []
        while True:
            nxt = self._next_owned()
            if nxt is None:
                break
            self.target.outq.popleft()
            left.append(f"{self._show(nxt[1])}   (sent at {_fmt_s(nxt[0])} sec)")
        if left:
            if self.strict_end:
                last = self.script.events[-1] if self.script.events else None
                raise ScriptFailure(Failure(
                    last.line if last else 0, last.text if last else "",
                    f"unexpected outbound packet(s) after the last event ({len(left)})",
                    left, self._state()))
            self.result.warnings.append(
                "packets sent after the last scripted packet were not checked (packetdrill "
                "ignores them): " + "; ".join(left))


# --------------------------------------------------------------------------- API


def load_script(script: A.Script | str, target: str,
                defines: dict[str, str] | None = None) -> A.Script | RunResult:
    """A parsed script, or the failed RunResult that reports its syntax error (both runners)."""
    if not isinstance(script, str):
        return script
    try:
        return parse_file(script, defines=defines)
    except DrillSyntaxError as e:
        return RunResult(e.path, target, False,
                         Failure(e.line, "", f"syntax error: {e.message}", kind="error"))


def run_ustack(script: A.Script | str, *, tolerance_us: int | None = None,
               strict_end: bool = False, verbose: bool = False,
               log: Callable[[str], None] | None = None,
               defines: dict[str, str] | None = None) -> RunResult:
    """Run a script (parsed, or a path) against ustack under virtual time."""
    script = load_script(script, "ustack", defines)
    if isinstance(script, RunResult):
        return script
    return Runner(script, UstackTarget(), tolerance_us=tolerance_us, strict_end=strict_end,
                  verbose=verbose, log=log).run()

