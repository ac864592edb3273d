"""The `ustack` command (also `python -m ustack`)."""
from __future__ import annotations

import argparse
import os
import sys


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"ustack {what}: needs root (CAP_SYS_ADMIN for a private network namespace, "
                 "CAP_NET_ADMIN for the TUN device); run it with sudo")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["drill"]:
        # forwarded whole: the drill command parses its own options (--help included)
        from ustack.drill.cli import main as drill_main
        return drill_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ustack", description="A userspace TCP/IP stack that "
                                     "ends connections exactly like Linux.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run ustack against the Linux kernel in a private "
                                       "network namespace and show what happened")
    demo.add_argument("--connections", type=int, default=300,
                      help="short HTTP connections to make (default 300)")
    demo.add_argument("--megabytes", type=int, default=100,
                      help="size of the echo transfer in MB (default 100)")
    demo.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    drill = sub.add_parser("drill", add_help=False,
                           help="run packetdrill scripts against ustack and/or Linux "
                                "(ustack drill --help)")
    drill.add_argument("drill_args", nargs=argparse.REMAINDER)
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
    serve.add_argument("--in-current-namespace", action="store_true",
                       help="use the caller's network namespace instead of a private one")
    serve.add_argument("--allow-root-namespace", action="store_true",
                       help="with --in-current-namespace: allow the root namespace")
    serve.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ss = sub.add_parser("ss", help="sockets of a running ustack serve, like ss -tanoe")
    ss.add_argument("--control", default="/run/ustack/ustack.sock", metavar="PATH")
    nstat = sub.add_parser("nstat", help="counters of a running ustack serve, like nstat")
    nstat.add_argument("--control", default="/run/ustack/ustack.sock", metavar="PATH")
    nstat.add_argument("-a", "--all", action="store_true", help="all counters, not only nonzero")
    args = parser.parse_args(argv)
    if args.command == "demo":
        _need_root("demo")
        if args.connections < 1 or args.megabytes < 1:
            parser.error("--connections and --megabytes must be at least 1")
        from ustack.demo import main as demo_main
        return demo_main(args.connections, args.megabytes, args.loop == "uvloop")
    if args.command == "serve":
        _need_root("serve")
        if args.port is not None and not 1 <= args.port <= 65535:
            parser.error("--port must be between 1 and 65535")
        from ustack.serve import main as serve_main
        return serve_main(args.app, args.port, args.ifname, args.address, args.kernel_address,
                          args.control, args.sysctl,
                          in_current_namespace=args.in_current_namespace,
                          allow_root_namespace=args.allow_root_namespace,
                          use_uvloop=args.loop == "uvloop")
    if args.command == "ss":
        from ustack.control import ss as ss_main
        return ss_main(args.control)
    if args.command == "nstat":
        from ustack.control import nstat as nstat_main
        return nstat_main(args.control, args.all)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
