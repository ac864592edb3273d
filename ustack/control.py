"""`ustack ss` and `ustack nstat`: the client side of `ustack serve`'s control socket.

The protocol is one JSON request line and one JSON response line over an AF_UNIX stream socket.
The server answers with structured records; this client filters and formats them like ss and
nstat do:

    {"cmd": "ss"}      -> {"sockets": [{"state": "ESTAB", "local": ["198.18.0.2", 7],
                                        "remote": [...], "recv_q": 0, "send_q": 0,
                                        "timer": ["on", 200, 0] | null, ...}, ...]}
    {"cmd": "nstat"}   -> {"counters": {"IpInReceives": 3, ...}, "server": "<id>"}
    anything refused or wrong -> {"error": "..."}

A socket record has the fields of ustack.host.ConnInfo (tuples as lists).  Every counter is
sent, zeros included, in Linux's order; "server" identifies one run of the server, so that
nstat's history (the counters at the previous call, for printing increments) is not compared
with the counters of another run.

Only the standard library is used here, so the client also runs without ustack's dependencies
(even as a bare file).
"""
from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

DEFAULT_PATH = "/run/ustack/ustack.sock"
MAX_LINE = 1 << 24  # a response of many TIME-WAIT records can be large


class ControlError(Exception):
    """The request could not be made or was refused; the message says why."""


class FilterError(ValueError):
    """An ss filter expression that cannot be parsed; the message says where."""


def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the `ustack serve` listening on `path` and return its response."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no ustack serve is listening on {path}") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: only root may talk to "
                               "ustack serve") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = bytearray()
            while b"\n" not in buf:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise ControlError(f"response from {path} is too long")
        except socket.timeout:
            raise ControlError(f"ustack serve on {path} did not answer in {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"talking to {path}: {e.strerror or e}") from None
    finally:
        s.close()
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        raise ControlError(f"ustack serve on {path} closed the connection without answering")
    try:
        resp = json.loads(line)
    except ValueError:
        raise ControlError(f"ustack serve on {path} sent something that is not JSON") from None
    if not isinstance(resp, dict):
        raise ControlError(f"ustack serve on {path} sent an unexpected response")
    if "error" in resp:
        raise ControlError(str(resp["error"]))
    return resp


# ==================================================================== ss
# ss's state names (its filter words) -> the names in the records (ss's column spelling)
STATES = {
    "established": "ESTAB", "syn-sent": "SYN-SENT", "syn-recv": "SYN-RECV",
    "fin-wait-1": "FIN-WAIT-1", "fin-wait-2": "FIN-WAIT-2", "time-wait": "TIME-WAIT",
    "closed": "CLOSED", "close-wait": "CLOSE-WAIT", "last-ack": "LAST-ACK",
    "listening": "LISTEN", "closing": "CLOSING",
}
_ALIASES = {"listen": "listening", "estab": "established", "syn-received": "syn-recv",
            "fin-wait1": "fin-wait-1", "fin-wait2": "fin-wait-2", "timewait": "time-wait",
            "unconnected": "closed"}
ALL_STATES = frozenset(STATES.values())
# ss's state groups (ss(8) STATE-FILTER)
GROUPS = {
    "all": ALL_STATES,
    "connected": ALL_STATES - {"LISTEN", "CLOSED"},
    "synchronized": ALL_STATES - {"LISTEN", "CLOSED", "SYN-SENT"},
    "bucket": frozenset({"SYN-RECV", "TIME-WAIT"}),
    "big": ALL_STATES - {"SYN-RECV", "TIME-WAIT"},
}


def state_set(word: str) -> frozenset[str]:
    """The states an ss state word or group names; FilterError for an unknown word."""
    word = word.lower()
    word = _ALIASES.get(word, word)
    if word in GROUPS:
        return GROUPS[word]
    if word in STATES:
        return frozenset({STATES[word]})
    raise FilterError(f"unknown state {word!r} (states: {', '.join(STATES)}; groups: "
                      f"{', '.join(GROUPS)})")


Record = dict[str, Any]
Predicate = Callable[[Record], bool]

_TOKEN = re.compile(r"\s*(\(|\)|==|!=|>=|<=|=|>|<|&&|\|\||&|\||!|[^\s()=!<>&|]+)")
_OPS = {"=": "eq", "==": "eq", "eq": "eq", "!=": "ne", "ne": "ne", "neq": "ne",
        ">": "gt", "gt": "gt", "<": "lt", "lt": "lt", ">=": "ge", "ge": "ge", "geq": "ge",
        "<=": "le", "le": "le", "leq": "le"}
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "lt": lambda a, b: a < b, "ge": lambda a, b: a >= b, "le": lambda a, b: a <= b}


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:   # only whitespace is left
            break
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def _port(text: str) -> int:
    text = text[1:] if text.startswith(":") else text
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise FilterError(f"{text!r} is not a port number")
    return int(text)


def _host_matcher(text: str) -> Callable[[str, int], bool]:
    """ss's HOST:PORT syntax: ADDR, ADDR/PREFIX, ADDR:PORT, [ADDR6]:PORT, :PORT, *."""
    addr, port = text, None
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise FilterError(f"{text!r}: missing ']'")
        addr = inner
        if rest:
            if not rest.startswith(":"):
                raise FilterError(f"{text!r} is not [ADDRESS]:PORT")
            port = _port(rest)
    elif text.count(":") == 1:
        addr, _, p = text.partition(":")
        port = None if p in ("*", "") else _port(p)
    if addr in ("", "*"):
        network = None
    else:
        try:
            network = ipaddress.ip_network(addr, strict=False)
        except ValueError:
            raise FilterError(f"{addr!r} is not an address or prefix") from None

    def match(address: str, number: int) -> bool:
        if port is not None and number != port:
            return False
        if network is None:
            return True
        try:
            return ipaddress.ip_address(address) in network
        except ValueError:
            return False
    return match


class _Parser:
    """ss's filter EXPRESSION: dst/src HOST, dport/sport OP PORT, and/or/not, parentheses."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise FilterError("the filter ends too early")
        self.pos += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.expr()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()!r} in the filter")
        return pred

    def expr(self) -> Predicate:
        terms = [self.conj()]
        while self.peek() in ("or", "||", "|"):
            self.take()
            terms.append(self.conj())
        return terms[0] if len(terms) == 1 else (lambda r: any(t(r) for t in terms))

    def conj(self) -> Predicate:
        factors = [self.unary()]
        while self.peek() is not None and self.peek() not in ("or", "||", "|", ")"):
            if self.peek() in ("and", "&&", "&"):
                self.take()
            factors.append(self.unary())
        return factors[0] if len(factors) == 1 else (lambda r: all(f(r) for f in factors))

    def unary(self) -> Predicate:
        tok = self.take()
        if tok in ("not", "!"):
            inner = self.unary()
            return lambda r: not inner(r)
        if tok == "(":
            inner = self.expr()
            if self.take() != ")":
                raise FilterError("missing ')'")
            return inner
        if tok in ("dst", "src"):
            side = "remote" if tok == "dst" else "local"
            op = "eq"
            if self.peek() in _OPS:
                op = _OPS[self.take()]
                if op not in ("eq", "ne"):
                    raise FilterError(f"{tok} takes = or != only")
            match = _host_matcher(self.take())
            if op == "ne":
                return lambda r: not match(*r[side])
            return lambda r: match(*r[side])
        if tok in ("dport", "sport"):
            side = "remote" if tok == "dport" else "local"
            op = _OPS[self.take()] if self.peek() in _OPS else "eq"
            port = _port(self.take())
            compare = _COMPARE[op]
            return lambda r: compare(r[side][1], port)
        raise FilterError(f"unexpected {tok!r}: a filter is [state STATE]... [exclude STATE]... "
                          "[dst|src HOST[:PORT]] [dport|sport OP [:]PORT] joined by "
                          "and/or/not and parentheses")


class SsOptions:
    """What `ustack ss` was asked for (ss's options of the same letters).

    (A plain class, not a dataclass: this module must also load as a bare file.)"""

    def __init__(self, *, all: bool = False, listening: bool = False, options: bool = False,
                 extended: bool = False, info: bool = False, memory: bool = False,
                 header: bool = True, filter: Iterable[str] = ()) -> None:
        self.all = all                # -a: listening sockets too
        self.listening = listening    # -l: listening sockets only
        self.options = options        # -o: timer:(...)
        self.extended = extended      # -e: orphan, substate
        self.info = info              # -i: TCP_INFO (congestion control, rtt, cwnd, ...)
        self.memory = memory          # -m: socket memory (ustack keeps none; accepted)
        self.header = header          # -H turns it off
        self.filter = list(filter)


def compile_filter(words: Iterable[str], *, all_states: bool = False,
                   listening: bool = False) -> tuple[frozenset[str], Predicate | None]:
    """ss's FILTER := [state STATE]... [exclude STATE]... [EXPRESSION] -> (states to show,
    predicate or None).  Without a state word: -l listening only, -a all, else connected."""
    tokens = _tokenize(" ".join(words))
    states: set[str] = set()
    excluded: set[str] = set()
    explicit = False
    while tokens and tokens[0] in ("state", "exclude", "excl"):
        word = tokens.pop(0)
        if not tokens:
            raise FilterError(f"'{word}' needs a state name")
        names = state_set(tokens.pop(0))
        if word == "state":
            states |= names
            explicit = True
        else:
            excluded |= names
    if not explicit:
        states = set(GROUPS["all"] if all_states else
                     {"LISTEN"} if listening else GROUPS["connected"])
    predicate = _Parser(tokens).parse() if tokens else None
    return frozenset(states - excluded), predicate


def _fmt_ms(ms: int) -> str:
    """A timer's time left as ustack's ConnInfo prints it: 200ms, 59.899sec, 2min5sec."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3f}sec"
    return f"{ms // 60_000}min{(ms % 60_000) // 1000}sec"


def _endpoint(addr: str, port: int, listener: bool = False) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{'*' if listener and not port else port}"


def _info_line(r: Record) -> str:
    """ss -i's second line: what TCP_INFO says about the sender."""
    parts = [r.get("congestion") or ""]
    parts.append(f"rto:{r.get('rto', 0)} rtt:{r.get('rtt', 0.0):.3f}/{r.get('rttvar', 0.0):.3f}")
    parts.append(f"mss:{r.get('mss', 0)} cwnd:{r.get('cwnd', 0)}")
    if r.get("ssthresh"):
        parts.append(f"ssthresh:{r['ssthresh']}")
    if r.get("retrans") or r.get("retrans_out"):
        parts.append(f"retrans:{r.get('retrans_out', 0)}/{r.get('retrans', 0)}")
    if r.get("lost"):
        parts.append(f"lost:{r['lost']}")
    if r.get("sacked"):
        parts.append(f"sacked:{r['sacked']}")
    if r.get("reordering", 3) != 3:
        parts.append(f"reordering:{r['reordering']}")
    if r.get("ca_state") and r["ca_state"] != "open":
        parts.append(f"ca_state:{r['ca_state']}")
    return "\t " + " ".join(p for p in parts if p)


def format_ss(records: list[Record], opts: SsOptions) -> list[str]:
    """The lines `ss` would print for these socket records under these options (filtered)."""
    states, predicate = compile_filter(opts.filter, all_states=opts.all,
                                       listening=opts.listening)
    rows = []
    for r in records:
        if r.get("state") not in states or (predicate is not None and not predicate(r)):
            continue
        listener = r["state"] == "LISTEN"
        local = _endpoint(r["local"][0], r["local"][1])
        remote = _endpoint(r["remote"][0], r["remote"][1], listener)
        extra = []
        if opts.options and r.get("timer"):
            kind, left, n = r["timer"]
            extra.append(f"timer:({kind},{_fmt_ms(int(left))},{n})")
        if opts.extended:
            if r.get("orphan"):
                extra.append("orphan")
            if r.get("substate") and r["substate"] != r["state"]:
                extra.append(f"substate:{r['substate']}")
        rows.append((r["state"], str(r.get("recv_q", 0)), str(r.get("send_q", 0)), local,
                     remote, " ".join(extra), r))
    head = ("State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port")
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(head)]

    def line(cells: Iterable[str]) -> str:
        return " ".join(c.ljust(w) for c, w in zip(cells, widths))

    out = [line(head).rstrip() + " Process"] if opts.header else []
    for row in rows:
        out.append((line(row[:5]) + (" " + row[5] if row[5] else "")).rstrip())
        if opts.info and row[6].get("cwnd"):
            out.append(_info_line(row[6]))
    return out


def ss(path: str = DEFAULT_PATH, opts: SsOptions | None = None) -> int:
    """Print the running stack's sockets like `ss -t` (with `opts`: ss's options and filter).
    Returns the exit status: 0, 1 when the server cannot be asked, 2 for a bad filter."""
    opts = SsOptions(all=True, options=True, extended=True) if opts is None else opts
    try:
        compile_filter(opts.filter)
    except FilterError as e:
        print(f"ustack ss: bad filter: {e}", file=sys.stderr)
        return 2
    try:
        resp = request(path, {"cmd": "ss"})
    except ControlError as e:
        print(f"ustack ss: {e}", file=sys.stderr)
        return 1
    records = resp.get("sockets", [])
    for line in format_ss(records, opts):
        print(line)
    return 0


# ==================================================================== nstat
def history_path() -> str:
    """Where nstat keeps the counters of its previous call: $USTACK_NSTAT_HISTORY, else
    /run/ustack/nstat.u<uid>.history (one file per user; inside, one entry per control
    socket).  Not $NSTAT_HISTORY: that is the real nstat's file, in its own format."""
    return os.environ.get("USTACK_NSTAT_HISTORY") or f"/run/ustack/nstat.u{os.getuid()}.history"


def _load_history(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_history(path: str, data: dict[str, Any]) -> str | None:
    """Write the history atomically; the reason it could not be written, or None."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nstat.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None


class NstatOptions:
    """What `ustack nstat` was asked for (nstat's options of the same letters)."""

    def __init__(self, *, absolute: bool = False, zeros: bool = False, no_update: bool = False,
                 no_output: bool = False, reset: bool = False, json: bool = False,
                 patterns: Iterable[str] = ()) -> None:
        self.absolute = absolute      # -a: values since the start, not since the last call
        self.zeros = zeros            # -z: counters that are 0 too
        self.no_update = no_update    # -s: leave the history as it is
        self.no_output = no_output    # -n: only update the history
        self.reset = reset            # -r: forget the history
        self.json = json              # -j
        self.patterns = list(patterns)


def nstat_values(current: dict[str, int], server: Any, control_path: str,
                 opts: NstatOptions, history_file: str | None = None) -> tuple[dict[str, int],
                                                                           str | None]:
    """The values nstat prints (increments since the history, or absolute) and the history
    updated as the options say.  Returns (values, warning or None)."""
    history_file = history_file or history_path()
    history = _load_history(history_file)
    entry = history.get(control_path) if not opts.reset else None
    base: dict[str, int] = {}
    if not opts.absolute and isinstance(entry, dict) and entry.get("server") == server:
        base = entry.get("counters") or {}
    values = {}
    for name, value in current.items():
        old = base.get(name, 0)
        # a counter that went down belongs to another run: print it whole
        values[name] = value - old if value >= old else value
    warning = None
    if not opts.no_update:
        history[control_path] = {"server": server, "counters": current}
        warning = _save_history(history_file, history)
    return values, warning


def nstat(path: str = DEFAULT_PATH, opts: NstatOptions | bool | None = None) -> int:
    """Print the running stack's counters like `nstat` (see NstatOptions); an old-style
    bool second argument means -a -z.  Returns the exit status."""
    if isinstance(opts, bool) or opts is None:
        opts = NstatOptions(absolute=True, zeros=bool(opts), no_update=True)
    try:
        resp = request(path, {"cmd": "nstat", "all": True})
    except ControlError as e:
        print(f"ustack nstat: {e}", file=sys.stderr)
        return 1
    current = {k: int(v) for k, v in resp.get("counters", {}).items()}
    values, warning = nstat_values(current, resp.get("server"), os.path.abspath(path), opts)
    if warning:
        print(f"ustack nstat: cannot save the history: {warning}", file=sys.stderr)
    if opts.no_output:
        return 0
    shown = {k: v for k, v in values.items()
             if (v or opts.zeros)
             and (not opts.patterns or any(fnmatch.fnmatchcase(k, p) for p in opts.patterns))}
    if opts.json:
        print(json.dumps({"kernel": shown}))
        return 0
    print("#kernel")
    for name, value in shown.items():
        print(f"{name:<31} {value:<18} {0.0:.1f}")
    return 0
