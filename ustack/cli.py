"""The `ustack` command (also `python -m ustack`).

Subcommands: demo, drill, serve, ss, nstat, ladder.  ss and nstat take the options of the Linux
tools of the same names (ustack ss -tanoi state established dport = :80; ustack nstat -az).
Bad options give a usage message and exit status 2; Ctrl-C exits 130 and a closed pipe
(ustack ss | head) ends the command quietly, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"ustack {what}: needs root (CAP_SYS_ADMIN for a private network namespace, "
                 "CAP_NET_ADMIN for the TUN device); run it with sudo")


def version() -> str:
    """ustack's version: the installed distribution's, else ustack.__version__."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("ustack")
    except PackageNotFoundError:
        import ustack
        return getattr(ustack, "__version__", "unknown")


class _Version(argparse.Action):
    """--version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"ustack {version()}")
        parser.exit()


def _control_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", default="/run/ustack/ustack.sock", metavar="PATH",
                        help="control socket of the ustack serve to ask "
                             "(default /run/ustack/ustack.sock)")


def ss_parser() -> argparse.ArgumentParser:
    """`ustack ss`: ss's options and FILTER."""
    p = argparse.ArgumentParser(
        prog="ustack ss", description="Sockets of a running ustack serve, like ss.",
        epilog="FILTER := [state STATE]... [exclude STATE]... [EXPRESSION]; STATE is one of "
               "established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, closed, "
               "close-wait, last-ack, listening, closing, or a group: all, connected, "
               "synchronized, bucket, big.  EXPRESSION: dst|src HOST[/PREFIX][:PORT], "
               "dport|sport OP [:]PORT (OP: = == != < > <= >= eq ne lt gt le ge), joined by "
               "and, or, not and parentheses.  Example: ustack ss -to state time-wait "
               "dport = :80")
    p.add_argument("-t", "--tcp", action="store_true", help="TCP sockets (the only kind)")
    p.add_argument("-n", "--numeric", action="store_true",
                   help="numeric addresses and ports (always)")
    p.add_argument("-a", "--all", action="store_true",
                   help="listening sockets too (default: connected ones only)")
    p.add_argument("-l", "--listening", action="store_true", help="listening sockets only")
    p.add_argument("-o", "--options", action="store_true", help="timer information")
    p.add_argument("-e", "--extended", action="store_true",
                   help="details: orphan, the substate of a TIME-WAIT record")
    p.add_argument("-i", "--info", action="store_true",
                   help="internal TCP information (congestion control, rto, rtt, cwnd, ...)")
    p.add_argument("-m", "--memory", action="store_true",
                   help="accepted for compatibility: ustack keeps no socket memory accounting")
    p.add_argument("-H", "--no-header", action="store_true", help="no header line")
    _control_option(p)
    p.add_argument("filter", nargs="*", metavar="FILTER", help="see below")
    return p


def nstat_parser() -> argparse.ArgumentParser:
    """`ustack nstat`: nstat's options and PATTERNs."""
    p = argparse.ArgumentParser(
        prog="ustack nstat", description="Counters of a running ustack serve, like nstat: by "
        "default the increments since the previous call (kept in a history file, "
        "$USTACK_NSTAT_HISTORY or /run/ustack/nstat.u<uid>.history).")
    p.add_argument("-a", "--ignore", action="store_true", dest="absolute",
                   help="absolute values (since the server started), not increments")
    p.add_argument("-z", "--zeros", action="store_true", help="counters that are 0 too")
    p.add_argument("-s", "--noupdate", action="store_true", help="do not update the history")
    p.add_argument("-n", "--nooutput", action="store_true",
                   help="print nothing, only update the history")
    p.add_argument("-r", "--reset", action="store_true", help="reset the history")
    p.add_argument("-j", "--json", action="store_true", help="JSON output")
    _control_option(p)
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="only counters whose names match one of these shell patterns "
                        "(TcpExt*, *Retrans*)")
    return p


def ladder_parser() -> argparse.ArgumentParser:
    """`ustack ladder`: a pcap file to a ladder diagram."""
    p = argparse.ArgumentParser(
        prog="ustack ladder", description="Draw one TCP connection of a pcap file as a "
        "ladder diagram (SVG, or an HTML page when the output ends in .html).")
    p.add_argument("pcap", metavar="FILE.pcap")
    p.add_argument("-o", "--output", metavar="OUT.svg",
                   help="where to write it (default: FILE.svg next to the capture)")
    p.add_argument("--conn", metavar="A:P-B:P",
                   help="the connection to draw when the capture has several "
                        "(default: the first)")
    return p


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ustack", description="A userspace TCP/IP stack that "
                                     "ends connections exactly like Linux.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run ustack against the Linux kernel in a private "
                                       "network namespace and show what happened")
    demo.add_argument("--connections", type=int, default=300,
                      help="short HTTP connections to make (default 300)")
    demo.add_argument("--megabytes", type=int, default=100,
                      help="size of the echo transfer in MB (default 100)")
    demo.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    demo.add_argument("--no-offload", action="store_true",
                      help="one segment per TUN read and write (no checksum/TSO offloads)")
    # these parse their own arguments (their --help included): listed here for ustack --help
    sub.add_parser("drill", add_help=False, help="run packetdrill scripts against ustack "
                   "and/or Linux (ustack drill --help)")
    sub.add_parser("ss", add_help=False, help="sockets of a running ustack serve, like ss "
                   "(ustack ss --help)")
    sub.add_parser("nstat", add_help=False, help="counters of a running ustack serve, like "
                   "nstat (ustack nstat --help)")
    sub.add_parser("ladder", add_help=False, help="draw a TCP connection of a pcap file as a "
                   "ladder diagram (ustack ladder --help)")
    serve = sub.add_parser("serve", help="run a server on ustack over a TUN device until "
                                         "SIGINT/SIGTERM (in a private network namespace)")
    serve.add_argument("--app", choices=("echo", "discard", "http"), required=True)
    serve.add_argument("--port", type=int, default=None,
                       help="TCP port (default: echo 7, discard 9, http 80)")
    serve.add_argument("--ifname", default="ust0")
    serve.add_argument("--address", default="198.18.0.2", help="ustack's address")
    serve.add_argument("--kernel-address", default="198.18.0.1/24",
                       help="the kernel side of the TUN device")
    serve.add_argument("--control", default="/run/ustack/ustack.sock", metavar="PATH",
                       help="control socket for ustack ss / nstat")
    serve.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE")
    serve.add_argument("--pcap", metavar="FILE",
                       help="record every packet of the TUN device in FILE (pcap, readable "
                            "by tcpdump -r and Wireshark; - for standard output)")
    serve.add_argument("--offload", action="store_true",
                       help="TUN checksum and TSO offloads: super-segments of up to 64 KB "
                            "both ways (a capture then shows them whole)")
    serve.add_argument("--in-current-namespace", action="store_true",
                       help="use the caller's network namespace instead of a private one")
    serve.add_argument("--allow-root-namespace", action="store_true",
                       help="with --in-current-namespace: allow the root namespace")
    serve.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    return parser


def _run(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    rest = argv[1:]
    if command == "drill":
        # forwarded whole: the drill command parses its own options (--help included)
        from ustack.drill.cli import main as drill_main
        return drill_main(rest)
    if command == "ss":
        p = ss_parser()
        a = p.parse_intermixed_args(rest)
        from ustack.control import FilterError, SsOptions, compile_filter
        from ustack.control import ss as ss_main
        try:
            compile_filter(a.filter)
        except FilterError as e:
            p.error(f"bad filter: {e}")
        return ss_main(a.control, SsOptions(all=a.all, listening=a.listening,
                                            options=a.options, extended=a.extended,
                                            info=a.info, memory=a.memory,
                                            header=not a.no_header, filter=a.filter))
    if command == "nstat":
        a = nstat_parser().parse_intermixed_args(rest)
        from ustack.control import NstatOptions
        from ustack.control import nstat as nstat_main
        return nstat_main(a.control, NstatOptions(
            absolute=a.absolute, zeros=a.zeros, no_update=a.noupdate, no_output=a.nooutput,
            reset=a.reset, json=a.json, patterns=a.patterns))
    if command == "ladder":
        return _ladder(ladder_parser().parse_args(rest))
    parser = _top_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        _need_root("demo")
        if args.connections < 1 or args.megabytes < 1:
            parser.error("--connections and --megabytes must be at least 1")
        from ustack.demo import main as demo_main
        return demo_main(args.connections, args.megabytes, args.loop == "uvloop",
                         not args.no_offload)
    if args.command == "serve":
        _need_root("serve")
        if args.port is not None and not 1 <= args.port <= 65535:
            parser.error("--port must be between 1 and 65535")
        from ustack.serve import main as serve_main
        return serve_main(args.app, args.port, args.ifname, args.address, args.kernel_address,
                          args.control, args.sysctl,
                          in_current_namespace=args.in_current_namespace,
                          allow_root_namespace=args.allow_root_namespace,
                          use_uvloop=args.loop == "uvloop", pcap=args.pcap,
                          offload=args.offload)
    parser.error(f"unknown command {args.command}")
    return 2


def _ladder(args: argparse.Namespace) -> int:
    from ustack.ladder import connections, ladder_from_pcap, parse_conn, parse_segments
    from ustack.pcap import read_pcap
    out = args.output or os.path.splitext(args.pcap)[0] + ".svg"
    try:
        if args.conn is None:
            conns = connections(parse_segments(read_pcap(args.pcap)))
            if len(conns) > 1:
                print(f"ustack ladder: {len(conns)} connections in {args.pcap}; drawing the "
                      f"first, {conns[0]} (choose one with --conn: "
                      f"{', '.join(map(str, conns))})", file=sys.stderr)
        else:
            parse_conn(args.conn)
        drawn = ladder_from_pcap(args.pcap, out, args.conn)
    except OSError as e:
        print(f"ustack ladder: {e.filename or args.pcap}: {e.strerror or e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"ustack ladder: {args.pcap}: {e}", file=sys.stderr)
        return 1
    print(f"ustack ladder: {drawn} -> {out}")
    return 0


def _exit_message(status: str | None) -> int:
    """sys.exit("message")'s behaviour: the message on stderr, status 1 (None: 0)."""
    if status is None:
        return 0
    print(status, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """The `ustack` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            status: int | str | None = _run(argv)
        except SystemExit as e:   # argparse's --help and usage errors, _need_root
            status = e.code
        sys.stdout.flush()   # a closed pipe shows here, where it can be caught
        return status if isinstance(status, int) else _exit_message(status)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT   # 130, as a shell reports a command ended by Ctrl-C
    except BrokenPipeError:
        # the reader went away (ustack ss | head): stop quietly, and keep Python from
        # complaining again when it flushes stdout on the way out
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
