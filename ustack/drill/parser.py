"""Lexer and parser for packetdrill scripts (the language of google/packetdrill's
lexer.l / parser.y, as used by gtests/net/tcp and the Linux selftests).

Entry points: :func:`parse_script` (text) and :func:`parse_file` (path).  Both return a
:class:`ustack.drill.ast.Script` or raise :class:`DrillSyntaxError` ("path:line: message").

Differences from packetdrill, all on the lenient side:

* an unknown ``--option`` is kept (with a warning) instead of being fatal;
* an unknown TCP option inside ``<...>`` becomes :class:`~ustack.drill.ast.OptUnknown`;
* GRE / MPLS / IP-in-IP encapsulated packets become :class:`~ustack.drill.ast.Unsupported`;
* the text after a syscall's errno, ``(...)``, may hold any characters;
* a ``-D`` symbol whose value is several tokens (``O_RDWR|O_NONBLOCK``) expands to them.
"""
from __future__ import annotations

import ast as _pyast
import os
import re
import shlex
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Iterable, Mapping

from .ast import (
    INBOUND, KNOWN_OPTIONS, OUTBOUND, Array, Assign, BitOr, Call, CodeBlock, DeviceSetup,
    DrillConfig, DrillWarning, EllipsisExpr, Event, EventTime, Expr, IcmpEchoed, IcmpPacket,
    Int, IpInfo, OptEol, OptFastOpen, OptMd5, OptMss, OptNop, Option, OptSack, OptSackOk,
    OptTimestamp, OptUnknown, OptWscale, RunScript, Script, ShellBlock, ShellCmd, ShellOther,
    String, Struct, Symbol, Syscall, SysctlSet, TcpOption, TcpPacket, TimeKind, UdpPacket,
    Unsupported,
)

__all__ = [
    "DrillSyntaxError", "parse_script", "parse_file", "parse_shell", "Token", "tokenize",
    "KSFT_IPV4_DEFINES", "KSFT_IPV6_DEFINES",
]

# The -D symbols the Linux selftest runner (tools/testing/selftests/net/packetdrill/
# ksft_runner.sh) passes; scripts there use them as bare words (FO TFO_COOKIE).
KSFT_IPV4_DEFINES: dict[str, str] = {
    "TFO_COOKIE": "3021b9d889017eeb",
    "TFO_COOKIE_ZERO": "b7c12350a90dc8f5",
    "CMSG_LEVEL_IP": "SOL_IP",
    "CMSG_TYPE_RECVERR": "IP_RECVERR",
}
KSFT_IPV6_DEFINES: dict[str, str] = {
    "TFO_COOKIE": "c1d1e9742a47a9bc",
    "CMSG_LEVEL_IP": "SOL_IPV6",
    "CMSG_TYPE_RECVERR": "IPV6_RECVERR",
}


class DrillSyntaxError(Exception):
    """A script the packetdrill language rejects.  ``str()`` is ``path:line: message``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


# --------------------------------------------------------------------------- lexer

# Words the flex lexer turns into keyword tokens: -D symbols never replace these.
_RESERVED = frozenset("""
sa_family sin_port sin_addr msg_name msg_iov msg_flags msg_control cmsg_data cmsg_level
cmsg_type ee_errno ee_origin ee_type ee_code ee_info ee_data scm_sec scm_nsec fd u32 u64
ptr events revents onoff linger htons ipv4 ipv6 icmp udp GREv0 gre raw sum off key seq none
checksum present mpls label tc ttl inet_addr inet6_addr ack eol ecr mss mtu nop sack sackOK
md5 TS FO FOEXP tos flowlabel flags Flags val win urg wscale ect01 ect0 ect1 noecn ce id
""".split())

_RE_IPV4 = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_RE_FLOAT = re.compile(r"-?[0-9]*\.[0-9]+")
_RE_INT = re.compile(r"-?[0-9]+")
_RE_HEX = re.compile(r"0x[0-9a-fA-F]+")
_RE_WORD = re.compile(r"[A-Za-z0-9_]+")
_RE_OPTION = re.compile(r"--([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Token:
    kind: str          # WORD INT HEX FLOAT IPV4 STRING BACKTICK CODE OPTION ELLIPSIS CHAR EOF
    value: object      # int for INT/HEX, str otherwise (OPTION: (name, value|None))
    text: str          # as written
    line: int
    start: int         # offsets in the source
    end: int
    bol: bool = False  # first token on its line

    def show(self) -> str:
        if self.kind == "EOF":
            return "end of file"
        t = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return repr(t)


def tokenize(src: str, path: str = "<script>") -> list[Token]:
    """Split a script into tokens (comments dropped).  Ends with an EOF token."""
    toks: list[Token] = []
    i, n, line = 0, len(src), 1
    bol = True

    def err(msg: str, at_line: int) -> DrillSyntaxError:
        return DrillSyntaxError(path, at_line, msg)

    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            bol = True
            i += 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        start, start_line = i, line
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            j = src.find("*/", i + 2)
            if j < 0:
                raise err("unterminated /* comment", start_line)
            line += src.count("\n", i, j + 2)
            i = j + 2
            continue
        if src.startswith("%{", i):
            j = src.find("}%", i + 2)
            if j < 0:
                raise err("unterminated %{ code block (expected }%)", start_line)
            body = src[i + 2:j].strip(" \t")
            line += src.count("\n", i, j + 2)
            i = j + 2
            toks.append(Token("CODE", body, src[start:i], start_line, start, i, bol))
            bol = False
            continue
        if c == '"' or c == "`":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            if j >= n:
                what = "string" if c == '"' else "`command`"
                raise err(f"unterminated {what}", start_line)
            body = src[i + 1:j]
            line += src.count("\n", i, j + 1)
            i = j + 1
            kind = "STRING" if c == '"' else "BACKTICK"
            toks.append(Token(kind, body, src[start:i], start_line, start, i, bol))
            bol = False
            continue
        if src.startswith("...", i):
            i += 3
            toks.append(Token("ELLIPSIS", "...", "...", line, start, i, bol))
            bol = False
            continue
        m = _RE_OPTION.match(src, i)
        if m:
            name = m.group(1)
            j = m.end()
            value = None
            if j < n and src[j] == "=":
                k = j + 1
                quote = None
                while k < n:
                    ch = src[k]
                    if quote:
                        if ch == quote:
                            quote = None
                    elif ch in "\"'`":
                        quote = ch
                    elif ch.isspace() or src.startswith("//", k):
                        break
                    k += 1
                value = src[j + 1:k]
                j = k
            i = j
            toks.append(Token("OPTION", (name, value), src[start:i], line, start, i, bol))
            bol = False
            continue
        # numbers and words: longest match wins, ties go to the earlier flex rule
        best = None
        for kind, rx in (("IPV4", _RE_IPV4), ("FLOAT", _RE_FLOAT), ("INT", _RE_INT),
                         ("HEX", _RE_HEX), ("WORD", _RE_WORD)):
            m = rx.match(src, i)
            if m and (best is None or m.end() > best[1].end()):
                best = (kind, m)
        if best is not None:
            kind, m = best
            text = m.group(0)
            value: object = text
            if kind == "INT":
                value = int(text)
            elif kind == "HEX":
                value = int(text, 16)
            i = m.end()
            toks.append(Token(kind, value, text, line, start, i, bol))
            bol = False
            continue
        i += 1
        toks.append(Token("CHAR", c, c, line, start, i, bol))
        bol = False
    toks.append(Token("EOF", None, "", line, n, n, True))
    return toks


# --------------------------------------------------------------------------- parser

_VALID_FLAGS = set(".FSRPEWAU01234567")
_ECN_WORDS = ("noecn", "ect0", "ect1", "ect01", "ce")
_ENCAP_WORDS = ("ipv4", "ipv6", "gre", "GREv0", "mpls")
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF


def _int_option(text: str) -> int:
    text = text.strip()
    try:
        return int(text, 10)
    except ValueError:
        return int(text, 0)


def _usecs(tok: Token) -> int:
    """Seconds (int or float literal) to integer microseconds, exactly."""
    try:
        return int(Decimal(tok.text) * 1_000_000)
    except InvalidOperation:  # pragma: no cover - the lexer only makes numbers here
        return int(float(tok.text) * 1_000_000)


class _Parser:
    def __init__(self, src: str, path: str, defines: Mapping[str, str] | None,
                 options: Mapping[str, str | None] | None) -> None:
        self.src = src
        self.path = path
        self.toks = tokenize(src, path)
        self.pos = 0
        self.cli_defines = dict(defines or {})
        self.cli_options = dict(options or {})
        self.warnings: list[DrillWarning] = []

    # -- token helpers
    @property
    def tok(self) -> Token:
        return self.toks[self.pos]

    def peek(self, k: int = 1) -> Token:
        j = min(self.pos + k, len(self.toks) - 1)
        return self.toks[j]

    def advance(self) -> Token:
        t = self.toks[self.pos]
        if t.kind != "EOF":
            self.pos += 1
        return t

    def error(self, message: str, tok: Token | None = None) -> DrillSyntaxError:
        tok = tok or self.tok
        line = tok.line
        if tok.kind == "EOF" and self.pos > 0:
            line = self.toks[self.pos - 1].line   # report where the text stopped
        return DrillSyntaxError(self.path, line, message)

    def expected(self, what: str, tok: Token | None = None) -> DrillSyntaxError:
        tok = tok or self.tok
        return self.error(f"expected {what}, got {tok.show()}", tok)

    def is_char(self, c: str, tok: Token | None = None) -> bool:
        tok = tok or self.tok
        return tok.kind == "CHAR" and tok.value == c

    def is_word(self, w: str | Iterable[str], tok: Token | None = None) -> bool:
        tok = tok or self.tok
        if tok.kind != "WORD":
            return False
        return tok.value == w if isinstance(w, str) else tok.value in w

    def eat_char(self, c: str, what: str | None = None) -> Token:
        if not self.is_char(c):
            raise self.expected(what or repr(c))
        return self.advance()

    def eat_word(self, w: str) -> Token:
        if not self.is_word(w):
            raise self.expected(repr(w))
        return self.advance()

    def eat_int(self, what: str) -> Token:
        if self.tok.kind not in ("INT", "HEX"):
            raise self.expected(what)
        return self.advance()

    def adjacent(self, a: Token, b: Token) -> bool:
        return a.end == b.start

    # -- top level
    def parse(self) -> Script:
        options: list[Option] = []
        while self.tok.kind == "OPTION":
            t = self.advance()
            name, value = t.value  # type: ignore[misc]
            options.append(Option(name, value, line=t.line))
        defines = self._collect_defines(options)
        self._substitute(defines)
        config = self._config(options)

        init_command = None
        if self.tok.kind == "BACKTICK":
            t = self.advance()
            init_command = self._shell_block(t, defines)
        events: list[Event] = []
        cleanup = None
        while self.tok.kind != "EOF":
            t = self.tok
            if t.kind == "OPTION":
                raise self.error(f"option --{t.value[0]} must come before the first event")
            if t.kind == "BACKTICK" and self.peek().kind == "EOF":
                self.advance()
                cleanup = self._shell_block(t, defines)
                break
            events.append(self._event(defines))
        return Script(self.path, tuple(options), config, defines, init_command,
                      tuple(events), cleanup, tuple(self.warnings))

    def _collect_defines(self, options: list[Option]) -> dict[str, str]:
        defines: dict[str, str] = {}
        for o in options:
            if o.name == "define":
                if not o.value or "=" not in o.value or o.value.startswith("="):
                    raise DrillSyntaxError(self.path, o.line, f"bad definition: {o.value}")
                sym, val = o.value.split("=", 1)
                defines[sym] = val
        cli_define = self.cli_options.get("define")
        if cli_define and "=" in cli_define:
            sym, val = cli_define.split("=", 1)
            defines[sym] = val
        defines.update(self.cli_defines)   # the command line wins, as in packetdrill
        return defines

    def _substitute(self, defines: dict[str, str]) -> None:
        """Replace -D symbols in the remaining tokens, as flex's word() does."""
        if not defines:
            return
        out = self.toks[:self.pos]
        for t in self.toks[self.pos:]:
            if t.kind == "WORD" and t.value in defines and t.value not in _RESERVED:
                sub = tokenize(defines[t.value], self.path)[:-1]
                if not sub:
                    continue
                for k, s in enumerate(sub):
                    out.append(Token(s.kind, s.value, s.text, t.line,
                                     t.start if k == 0 else t.end,
                                     t.end, t.bol and k == 0))
                continue
            out.append(t)
        self.toks = out

    def _config(self, options: list[Option]) -> DrillConfig:
        vals: dict[str, object] = {}
        merged: list[tuple[str, str | None, int]] = [(o.name, o.value, o.line) for o in options]
        merged += [(k, v, 0) for k, v in self.cli_options.items()]
        ints = {"tolerance_usecs", "tcp_ts_tick_usecs", "mss", "mtu", "bind_port",
                "connect_port", "speed"}
        flags = {"tcp_ts_ecr_scaled", "strict_segments", "send_omit_free", "is_anyip"}
        strs = {"local_ip", "remote_ip", "gateway_ip", "netmask_ip", "init_scripts",
                "code_command", "code_format", "code_sockopt"}
        for name, value, line in merged:
            if name not in KNOWN_OPTIONS:
                self.warnings.append(DrillWarning(
                    f"unknown option --{name} ignored", line=line))
                continue
            takes = KNOWN_OPTIONS[name]
            if takes and value is None:
                raise DrillSyntaxError(self.path, line, f"option '{name}' requires an argument")
            if not takes and value is not None:
                raise DrillSyntaxError(self.path, line, f"option '{name}' forbids an argument")
            try:
                if name == "ip_version":
                    if value not in ("ipv4", "ipv4-mapped-ipv6", "ipv6"):
                        raise ValueError
                    vals[name] = value
                elif name in ints:
                    iv = _int_option(str(value))
                    lo = 0 if name in ("tcp_ts_tick_usecs", "mtu") else 1
                    hi = {"tcp_ts_tick_usecs": 1_000_000, "bind_port": _U16,
                          "connect_port": _U16}.get(name, 1 << 62)
                    if not lo <= iv <= hi:
                        raise ValueError
                    vals[name] = iv
                elif name == "tolerance_percent":
                    fv = float(str(value))
                    if not 0.0 <= fv <= 100.0:
                        raise ValueError
                    vals[name] = fv
                elif name in flags:
                    vals[name] = True
                elif name in strs:
                    vals[name] = value
                elif name == "non_fatal":
                    vals[name] = tuple(x for x in re.split(r"[,\s]+", str(value)) if x)
            except ValueError:
                raise DrillSyntaxError(self.path, line, f"bad --{name}: {value}") from None
        return DrillConfig(**vals)  # type: ignore[arg-type]

    # -- events
    def _event(self, defines: dict[str, str]) -> Event:
        first = self.tok
        time = self._event_time()
        t = self.tok
        action: object
        if self.is_char("<") or self.is_char(">"):
            action = self._packet()
        elif t.kind == "BACKTICK":
            self.advance()
            action = self._shell_block(t, defines)
        elif t.kind == "CODE":
            self.advance()
            action = CodeBlock(str(t.value), line=t.line)
        elif t.kind == "ELLIPSIS" or (t.kind == "WORD" and self.is_char("(", self.peek())):
            action = self._syscall()
        else:
            raise self.expected("a packet ('<' or '>'), a system call, a `command` "
                                "or a %{ code }% block after the event time")
        last = self.toks[self.pos - 1]
        text = self.src[first.start:last.end]
        self._check_time(time, action, first)
        return Event(time, action, text, line=first.line)  # type: ignore[arg-type]

    def _time_value(self) -> int:
        t = self.tok
        if t.kind not in ("INT", "FLOAT"):
            raise self.expected("a time in seconds")
        self.advance()
        if t.text.startswith("-"):
            raise self.error("negative time", t)
        return _usecs(t)

    def _event_time(self) -> EventTime:
        t = self.tok
        if self.is_char("*"):
            self.advance()
            return EventTime(TimeKind.ANY, 0, None, line=t.line)
        if self.is_char("+"):
            self.advance()
            start = self._time_value()
            if self.is_char("~"):
                self.advance()
                if not self.is_char("+"):
                    raise self.expected("'+' (a relative range is written +a~+b)")
                self.advance()
                end = self._time_value()
                return EventTime(TimeKind.RELATIVE_RANGE, start, end, line=t.line)
            return EventTime(TimeKind.RELATIVE, start, None, line=t.line)
        if t.kind in ("INT", "FLOAT"):
            start = self._time_value()
            if self.is_char("~"):
                self.advance()
                end = self._time_value()
                return EventTime(TimeKind.ABSOLUTE_RANGE, start, end, line=t.line)
            return EventTime(TimeKind.ABSOLUTE, start, None, line=t.line)
        if t.kind == "BACKTICK":
            raise self.expected("an event time (a `command` after the first event "
                                "needs a time, e.g. +0 `...`)")
        raise self.expected("an event time (e.g. 0, +0.1, 0.1~0.2, *)")

    def _check_time(self, time: EventTime, action: object, tok: Token) -> None:
        outbound_pkt = isinstance(action, (TcpPacket, UdpPacket, IcmpPacket)) and \
            action.direction == OUTBOUND
        if isinstance(action, Unsupported):
            return
        if time.end_us is not None and time.end_us < time.start_us:
            raise self.error("time range is backwards", tok)
        if time.kind == TimeKind.ANY and not outbound_pkt:
            raise self.error("event time <star> can only be used with outbound packets", tok)
        if time.kind in (TimeKind.ABSOLUTE_RANGE, TimeKind.RELATIVE_RANGE) and not outbound_pkt:
            raise self.error("event time range can only be used with outbound packets", tok)

    # -- shell and code
    def _shell_block(self, t: Token, defines: dict[str, str]) -> ShellBlock:
        raw = str(t.value)
        return ShellBlock(raw, parse_shell(raw, t.line, defines), line=t.line)

    # -- packets
    def _skip_event(self) -> None:
        """Skip to the first token of the next event (used for Unsupported lines)."""
        self.advance()
        while self.tok.kind != "EOF":
            t = self.tok
            if t.bol and (t.kind in ("INT", "FLOAT") or self.is_char("+") or self.is_char("*")
                          or (t.kind == "BACKTICK" and self.peek().kind == "EOF")):
                return
            self.advance()

    def _packet(self) -> object:
        dtok = self.advance()
        direction = INBOUND if dtok.value == "<" else OUTBOUND
        if self.is_word(_ENCAP_WORDS):
            what = f"encapsulated packet ({self.tok.value} header prefix)"
            start = dtok
            self._skip_event()
            last = self.toks[self.pos - 1]
            return Unsupported(what, self.src[start.start:last.end], line=dtok.line)
        ip = self._opt_ip_info()
        if self.is_word("udp"):
            self.advance()
            sport, dport = self._opt_ports()
            self.eat_char("(", "'(' and the UDP payload length")
            n = self.eat_int("the UDP payload length")
            self.eat_char(")")
            if not 0 <= int(n.value) <= _U16:  # type: ignore[call-overload]
                raise self.error("UDP payload size out of range", n)
            if ip is not None and ip.ecn is not None:
                raise self.error("ECN can only be used with TCP packets", dtok)
            return UdpPacket(direction, int(n.value), ip, sport, dport,  # type: ignore
                             line=dtok.line)
        if self.is_word("icmp"):
            self.advance()
            return self._icmp(direction, ip, dtok)
        return self._tcp(direction, ip, dtok)

    def _opt_ip_info(self) -> IpInfo | None:
        if not (self.is_char("(") or self.is_char("[")):
            return None
        open_tok = self.advance()
        close = ")" if open_tok.value == "(" else "]"
        ecn = tos = flowlabel = ttl = None
        while True:
            t = self.tok
            if self.is_word(_ECN_WORDS):
                ecn = str(self.advance().value)
            elif self.is_word("tos"):
                self.advance()
                tos = int(self.eat_int("a tos value (0x..)").value)  # type: ignore
                if not 0 <= tos <= 0xFF:
                    raise self.error("tos out of range for 8 bits", t)
            elif self.is_word("flowlabel"):
                self.advance()
                flowlabel = int(self.eat_int("a flow label (0x..)").value)  # type: ignore
                if not 0 <= flowlabel <= 0xFFFFF:
                    raise self.error("flowlabel out of range for 20 bits", t)
            elif self.is_word("ttl"):
                self.advance()
                ttl = int(self.eat_int("a TTL").value)  # type: ignore
                if not 0 <= ttl <= 0xFF:
                    raise self.error("ttl out of range", t)
            else:
                raise self.expected("noecn, ect0, ect1, ect01, ce, tos, flowlabel or ttl")
            if self.is_char(","):
                self.advance()
                continue
            break
        self.eat_char(close)
        return IpInfo(ecn, tos, flowlabel, ttl, line=open_tok.line)

    def _opt_ports(self) -> tuple[int | None, int | None]:
        if self.tok.kind == "INT" and self.is_char(">", self.peek()) \
                and self.peek(2).kind == "INT":
            a = self.advance()
            self.advance()
            b = self.advance()
            for p, what in ((a, "src"), (b, "dst")):
                if not 0 <= int(p.value) <= _U16:  # type: ignore[call-overload]
                    raise self.error(f"{what} port out of range", p)
            return int(a.value), int(b.value)  # type: ignore[call-overload]
        return None, None

    def _flags(self) -> str:
        t = self.tok
        if self.is_char("-") and not self.adjacent(t, self.peek()):
            self.advance()
            return ""
        if not (t.kind in ("WORD", "INT") or self.is_char(".")):
            raise self.expected("TCP flags (e.g. S, S., P., F., R, ., -)")
        parts = [self.advance()]
        while (self.tok.kind in ("WORD", "INT") or self.is_char(".")) \
                and self.adjacent(parts[-1], self.tok):
            parts.append(self.advance())
        flags = "".join(p.text for p in parts)
        bad = [c for c in flags if c not in _VALID_FLAGS]
        if bad:
            raise self.error(f"invalid TCP flag: '{bad[0]}' in {flags!r}", t)
        digits = [c for c in flags if c.isdigit()]
        if len(digits) > 1 or (digits and any(c in "EWA" for c in flags)):
            raise self.error(f"conflicting TCP flags in {flags!r}", t)
        return flags

    def _seq(self) -> tuple[int, int]:
        t = self.tok
        a = self.eat_int("a sequence range start:end(length)")
        self.eat_char(":", "':' in start:end(length)")
        b = self.eat_int("the end of start:end(length)")
        self.eat_char("(", "'(' in start:end(length)")
        n = self.eat_int("the payload length in start:end(length)")
        self.eat_char(")", "')' in start:end(length)")
        s, e, ln = int(a.value), int(b.value), int(n.value)  # type: ignore[call-overload]
        if not 0 <= s <= _U32:
            raise self.error("TCP start sequence number out of range", t)
        if not 0 <= e <= _U32:
            raise self.error("TCP end sequence number out of range", t)
        if not 0 <= ln <= _U16:
            raise self.error("TCP payload size out of range", t)
        if e != s + ln:
            raise self.error("inconsistent TCP sequence numbers and payload size", t)
        return s, ln

    def _tcp(self, direction: str, ip: IpInfo | None, dtok: Token) -> TcpPacket:
        sport, dport = self._opt_ports()
        flags = self._flags()
        seq, plen = self._seq()
        ack = window = urg = None
        if self.is_word("ack"):
            self.advance()
            t = self.eat_int("the ack number")
            ack = int(t.value)  # type: ignore[call-overload]
            if not 0 <= ack <= _U32:
                raise self.error("TCP ack sequence number out of range", t)
        if self.is_word("win"):
            self.advance()
            t = self.eat_int("the window")
            window = int(t.value)  # type: ignore[call-overload]
            if not 0 <= window <= _U16:
                raise self.error("TCP window value out of range", t)
        if self.is_word("urg"):
            self.advance()
            t = self.eat_int("the urgent pointer")
            urg = int(t.value)  # type: ignore[call-overload]
            if not 0 <= urg <= _U16:
                raise self.error("urg_ptr value out of range", t)
        options: tuple[TcpOption, ...] | None = ()
        if self.is_char("<"):
            lt = self.advance()
            if self.tok.kind == "ELLIPSIS":
                self.advance()
                self.eat_char(">", "'>' after <...")
                if direction != OUTBOUND:
                    raise self.error("<...> for TCP options can only be used with "
                                     "outbound packets", lt)
                options = None
            else:
                opts = [self._tcp_option()]
                while self.is_char(","):
                    self.advance()
                    opts.append(self._tcp_option())
                self.eat_char(">", "',' or '>' in the TCP option list")
                options = tuple(opts)
        if window is None and direction == INBOUND:
            raise self.error("window must be specified for inbound packets", dtok)
        if ip is not None and ip.ecn == "ect01" and direction != OUTBOUND:
            raise self.error("[ect01] can only be used with outbound packets", dtok)
        return TcpPacket(direction, flags, seq, plen, ack, window, urg, options, ip,
                         sport, dport, line=dtok.line)

    def _hex_blob(self, what: str, t0: Token) -> bytes:
        t = self.advance()
        text = t.text
        if not re.fullmatch(r"[0-9a-fA-F]*", text):
            hint = " (an undefined -D symbol?)" if re.fullmatch(r"[A-Za-z_]\w*", text) else ""
            raise self.error(f"{what} {text!r} is not a valid hex string{hint}", t)
        if len(text) % 2:
            raise self.error(f"{what} {text!r} has an odd number of digits", t)
        return bytes.fromhex(text)

    def _tcp_option(self) -> TcpOption:
        t = self.tok
        if t.kind != "WORD":
            raise self.expected("a TCP option (nop, mss N, sackOK, TS val N ecr N, ...)")
        name = str(t.value)
        ln = t.line
        if name == "nop":
            self.advance()
            return OptNop(line=ln)
        if name == "eol":
            self.advance()
            return OptEol(line=ln)
        if name == "mss":
            self.advance()
            v = self.eat_int("the MSS value")
            if not 0 <= int(v.value) <= _U16:  # type: ignore[call-overload]
                raise self.error("mss value out of range", v)
            return OptMss(int(v.value), line=ln)  # type: ignore[call-overload]
        if name == "wscale":
            self.advance()
            if self.is_char("*"):
                self.advance()
                return OptWscale(None, line=ln)
            v = self.eat_int("the window scale shift")
            if not 0 <= int(v.value) <= 0xFF:  # type: ignore[call-overload]
                raise self.error("window scale shift count out of range", v)
            return OptWscale(int(v.value), line=ln)  # type: ignore[call-overload]
        if name == "sackOK":
            self.advance()
            return OptSackOk(line=ln)
        if name == "sack":
            self.advance()
            blocks = []
            while self.tok.kind == "INT" and self.is_char(":", self.peek()):
                a = self.advance()
                self.advance()
                b = self.eat_int("the right edge of a SACK block")
                for x in (a, b):
                    if not 0 <= int(x.value) <= _U32:  # type: ignore[call-overload]
                        raise self.error("TCP SACK sequence number out of range", x)
                blocks.append((int(a.value), int(b.value)))  # type: ignore[call-overload]
            if not blocks:
                raise self.expected("a SACK block left:right")
            return OptSack(tuple(blocks), line=ln)
        if name == "TS":
            self.advance()
            self.eat_word("val")
            v = self.eat_int("the TS val")
            self.eat_word("ecr")
            e = self.eat_int("the TS ecr")
            for x, w in ((v, "ts val"), (e, "ecr val")):
                if not 0 <= int(x.value) <= _U32:  # type: ignore[call-overload]
                    raise self.error(f"{w} out of range", x)
            return OptTimestamp(int(v.value), int(e.value), line=ln)  # type: ignore
        if name in ("FO", "FOEXP"):
            self.advance()
            exp = name == "FOEXP"
            cookie = b""
            if self.tok.kind in ("WORD", "INT"):
                cookie = self._hex_blob("TCP fast open cookie", t)
                limit = 16
                if len(cookie) > limit:
                    raise self.error(f"TCP fast open cookie of {len(cookie)} bytes exceeds "
                                     f"maximum cookie length of {limit} bytes", t)
            return OptFastOpen(cookie, exp, line=ln)
        if name == "md5":
            self.advance()
            if self.tok.kind not in ("WORD", "INT"):
                raise self.expected("an MD5 digest in hex")
            digest = self._hex_blob("TCP MD5 digest", t)
            if len(digest) > 16:
                raise self.error("TCP MD5 digest longer than 16 bytes", t)
            return OptMd5(digest, line=ln)
        # Unknown option (AccECN's "ECN e1b 1 ceb 0 e0b 1", MPTCP...): keep its text.
        start = self.advance()
        last = start
        while not (self.tok.kind == "EOF" or self.is_char(",") or self.is_char(">")) \
                and self.tok.line == start.line:
            last = self.advance()
        return OptUnknown(name, self.src[start.start:last.end], line=ln)

    def _icmp(self, direction: str, ip: IpInfo | None, dtok: Token) -> IcmpPacket:
        if self.tok.kind != "WORD":
            raise self.expected("an ICMP type (e.g. unreachable)")
        icmp_type = str(self.advance().value)
        code = mtu = echo_id = None
        if self.tok.kind == "WORD" and not self.is_word(("mtu", "id")):
            code = str(self.advance().value)
        if self.is_word("mtu"):
            self.advance()
            mtu = int(self.eat_int("the MTU").value)  # type: ignore[call-overload]
        if self.is_word("id"):
            self.advance()
            echo_id = int(self.eat_int("the echo id").value)  # type: ignore[call-overload]
        echoed = None
        if self.is_char("["):
            bt = self.advance()
            if self.is_word(("udp", "raw")):
                proto = str(self.advance().value)
                self.eat_char("(")
                n = int(self.eat_int("a payload length").value)  # type: ignore
                self.eat_char(")")
                echoed = IcmpEchoed(proto, 0, n, line=bt.line)
            else:
                s, ln = self._seq()
                echoed = IcmpEchoed("tcp", s, ln, line=bt.line)
            self.eat_char("]")
        if ip is not None and ip.ecn == "ect01" and direction != OUTBOUND:
            raise self.error("[ect01] can only be used with outbound packets", dtok)
        return IcmpPacket(direction, icmp_type, code, mtu, echo_id, echoed, ip,
                          line=dtok.line)

    # -- system calls
    def _syscall(self) -> Syscall:
        end_us = None
        if self.tok.kind == "ELLIPSIS":
            self.advance()
            end_us = self._time_value()
        t = self.tok
        if t.kind != "WORD" or not self.is_char("(", self.peek()):
            raise self.expected("a system call name and '('")
        name = str(self.advance().value)
        self.advance()  # (
        args: tuple[Expr, ...] | None
        if self.is_char(")"):
            self.advance()
            args = None
        else:
            lst = [self._expr()]
            while self.is_char(","):
                self.advance()
                lst.append(self._expr())
            self.eat_char(")", "',' or ')' in the argument list")
            args = tuple(lst)
        if not self.is_char("="):
            raise self.expected(f"'=' and the expected result of {name}()")
        self.advance()
        result = self._expr()
        errno = note = None
        if self.tok.kind == "WORD" and not self.tok.bol:
            errno = str(self.advance().value)
        if self.is_char("(") and not self.tok.bol:
            note = self._note()
        return Syscall(name, args, result, errno, note, end_us, line=t.line)

    def _note(self) -> str:
        open_tok = self.advance()
        depth = 1
        last = open_tok
        while True:
            t = self.tok
            if t.kind == "EOF":
                raise self.error("unterminated '(' note after the result", open_tok)
            self.advance()
            if self.is_char("(", t):
                depth += 1
            elif self.is_char(")", t):
                depth -= 1
                if depth == 0:
                    break
            last = t
        if last is open_tok:
            return ""
        return " ".join(self.src[open_tok.end:last.end].split())

    def _expr(self) -> Expr:
        first = self._unary()
        if not self.is_char("|"):
            return first
        ops = [first]
        while self.is_char("|"):
            self.advance()
            ops.append(self._unary())
        flat: list[Expr] = []
        for o in ops:
            flat.extend(o.operands if isinstance(o, BitOr) else (o,))
        return BitOr(tuple(flat), line=first.line)

    def _unary(self) -> Expr:
        t = self.tok
        if t.kind == "WORD" and self.is_char("=", self.peek()):
            self.advance()
            self.advance()
            return Assign(str(t.value), self._expr(), line=t.line)
        return self._primary()

    def _expr_list(self, close: str) -> tuple[Expr, ...]:
        items: list[Expr] = []
        if self.is_char(close):
            self.advance()
            return ()
        items.append(self._expr())
        while self.is_char(","):
            self.advance()
            items.append(self._expr())
        self.eat_char(close, f"',' or '{close}'")
        return tuple(items)

    def _primary(self) -> Expr:
        t = self.tok
        ln = t.line
        if t.kind == "ELLIPSIS":
            self.advance()
            return EllipsisExpr(line=ln)
        if t.kind in ("INT", "HEX"):
            self.advance()
            return Int(int(t.value), t.kind == "HEX", line=ln)  # type: ignore[call-overload]
        if t.kind == "STRING":
            self.advance()
            if self.tok.kind == "ELLIPSIS":
                self.advance()
                return String(str(t.value), True, line=ln)
            return String(str(t.value), line=ln)
        if self.is_char("["):
            self.advance()
            return Array(self._expr_list("]"), line=ln)
        if self.is_char("{"):
            self.advance()
            return Struct(self._expr_list("}"), line=ln)
        if t.kind == "WORD":
            self.advance()
            if self.is_char("("):
                self.advance()
                args = self._expr_list(")")
                if self.is_char("="):
                    # msg_name(...)=..., msg_iov(1)=[...]
                    self.advance()
                    index = args[0] if len(args) == 1 else Array(args, line=ln)
                    return Assign(str(t.value), self._expr(), index, line=ln)
                return Call(str(t.value), args, line=ln)
            return Symbol(str(t.value), line=ln)
        raise self.expected("an expression (a number, ..., a symbol, \"string\", [array] "
                            "or {struct})")


# --------------------------------------------------------------------------- shell

_SEPARATORS = ("&&", "||", ";", "\n", "&")
_DEVICE_TOOLS = frozenset({"tc", "ip", "ethtool", "ifconfig"})
_REDIR = re.compile(r"^(\d*|&)(>>?|<)(&?\d+|\S*)$")
_ARITH = re.compile(r"\$\(\(([^()]*(?:\([^()]*\)[^()]*)*)\)\)")
_BRACED = re.compile(r"\$\{([A-Za-z_]\w*)\}")


def _split_shell(raw: str) -> list[tuple[int, str]]:
    """Split a shell block into (line offset, command) on newlines, ;, &&, ||, &."""
    text = re.sub(r"\\\n", "  ", raw)
    out: list[tuple[int, str]] = []
    cur: list[str] = []
    quote = None
    depth = 0
    line = cur_line = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            cur.append(c)
            if c == "\\" and quote == '"' and i + 1 < n:
                cur.append(text[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
            if c == "\n":
                line += 1
            i += 1
            continue
        if c in "'\"":
            quote = c
            cur.append(c)
            i += 1
            continue
        if c == "#" and (not cur or "".join(cur).strip() == "" or cur[-1] in " \t"):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("$(", i):
            depth += 1
            cur.append("$(")
            i += 2
            continue
        if c == ")" and depth:
            depth -= 1
            cur.append(c)
            i += 1
            continue
        sep = None
        if depth == 0:
            for s in _SEPARATORS:
                if text.startswith(s, i):
                    if s == "&" and ((cur and cur[-1] == ">") or text.startswith("&>", i)):
                        continue
                    sep = s
                    break
        if sep:
            cmd = "".join(cur).strip()
            if cmd:
                out.append((cur_line, cmd))
            cur = []
            if sep == "\n":
                line += 1
            i += len(sep)
            cur_line = line
            continue
        if c == "\n":
            line += 1
        cur.append(c)
        i += 1
    cmd = "".join(cur).strip()
    if cmd:
        out.append((cur_line, cmd))
    return out


def _arith(expr: str) -> str | None:
    """Evaluate a shell $((...)) of integer literals and + - * / % ( )."""
    try:
        tree = _pyast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None

    def ev(node: _pyast.AST) -> int:
        if isinstance(node, _pyast.Expression):
            return ev(node.body)
        if isinstance(node, _pyast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, _pyast.UnaryOp) and isinstance(node.op, (_pyast.USub, _pyast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, _pyast.USub) else v
        if isinstance(node, _pyast.BinOp):
            a, b = ev(node.left), ev(node.right)
            op = node.op
            if isinstance(op, _pyast.Add):
                return a + b
            if isinstance(op, _pyast.Sub):
                return a - b
            if isinstance(op, _pyast.Mult):
                return a * b
            if isinstance(op, (_pyast.Div, _pyast.FloorDiv)) and b:
                q = abs(a) // abs(b)
                return q if (a >= 0) == (b >= 0) else -q
            if isinstance(op, _pyast.Mod) and b:
                return a - b * (abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1))
        raise ValueError

    try:
        return str(ev(tree))
    except (ValueError, RecursionError):
        return None


def _expand(value: str, defines: Mapping[str, str]) -> str:
    value = _ARITH.sub(lambda m: _arith(m.group(1)) or m.group(0), value)
    return _BRACED.sub(lambda m: defines.get(m.group(1), m.group(0)), value)


def _sysctl_name(name: str) -> str:
    name = name.strip()
    if name.startswith("/proc/sys/"):
        name = name[len("/proc/sys/"):]
    return name.strip("/").replace("/", ".")


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError:
        return text.split()


def _strip_redirects(words: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Remove redirections; return (remaining words, [(operator, target)])."""
    rest: list[str] = []
    redirs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        m = _REDIR.match(w)
        if m:
            op, target = m.group(1) + m.group(2), m.group(3)
            if not target and i + 1 < len(words):
                target = words[i + 1]
                i += 1
            redirs.append((op, target))
        else:
            rest.append(w)
        i += 1
    return rest, redirs


def _classify(text: str, line: int, defines: Mapping[str, str]) -> list[ShellCmd]:
    words, redirs = _strip_redirects(_words(text))
    if not words:
        return [ShellOther(text, line=line)]
    prog = os.path.basename(words[0])
    if prog == "sysctl":
        sets = [w for w in words[1:] if not w.startswith("-") and "=" in w]
        if sets and not any(f in ("-p", "-a", "--system", "--load") for f in words[1:]):
            out: list[ShellCmd] = []
            for w in sets:
                name, value = w.split("=", 1)
                out.append(SysctlSet(text, _sysctl_name(name), _expand(value, defines),
                                     line=line))
            return out
        return [ShellOther(text, line=line)]
    if prog == "echo":
        targets = [t for op, t in redirs if op in (">", "1>", ">>") and
                   t.startswith("/proc/sys/")]
        if targets:
            args = words[1:]
            while args and args[0] in ("-n", "-e", "-ne", "-en"):
                args = args[1:]
            value = _expand(" ".join(args), defines)
            return [SysctlSet(text, _sysctl_name(targets[-1]), value, line=line)]
        return [ShellOther(text, line=line)]
    if prog == "set_sysctls.py" or prog.endswith("/set_sysctls.py"):
        out = []
        for w in words[1:]:
            if "=" in w:
                name, value = w.split("=", 1)
                out.append(SysctlSet(text, _sysctl_name(name), _expand(value, defines),
                                     line=line))
        return out or [ShellOther(text, line=line)]
    if prog in _DEVICE_TOOLS:
        return [DeviceSetup(text, line=line)]
    w0 = words[0]
    if (w0.endswith((".sh", ".py", ".pl")) or w0.startswith(("./", "../", "/"))) \
            and "=" not in w0.split("/")[0]:
        return [RunScript(text, _expand(w0, defines), tuple(words[1:]), line=line)]
    return [ShellOther(text, line=line)]


def parse_shell(raw: str, line: int = 0,
                defines: Mapping[str, str] | None = None) -> tuple[ShellCmd, ...]:
    """Split and classify the commands of a backtick block starting on ``line``."""
    defines = defines or {}
    out: list[ShellCmd] = []
    for off, cmd in _split_shell(raw):
        out.extend(_classify(cmd, line + off, defines))
    return tuple(out)


# --------------------------------------------------------------------------- entry points


def parse_script(text: str, path: str = "<script>", *,
                 defines: Mapping[str, str] | None = None,
                 options: Mapping[str, str | None] | None = None) -> Script:
    """Parse script ``text``.

    ``defines`` are command-line ``-D NAME=value`` symbols (they override the script's
    ``--define``s); ``options`` are command-line ``--name=value`` options (value None for
    flags) that override the script's own.
    """
    return _Parser(text, path, defines, options).parse()


def parse_file(path: str | os.PathLike[str], *,
               defines: Mapping[str, str] | None = None,
               options: Mapping[str, str | None] | None = None) -> Script:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    return parse_script(text, os.fspath(path), defines=defines, options=options)
