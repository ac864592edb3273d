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
    args = parser.parse_args(argv)
    if args.command == "demo":
        _need_root("demo")
        if args.connections < 1 or args.megabytes < 1:
            parser.error("--connections and --megabytes must be at least 1")
        from ustack.demo import main as demo_main
        return demo_main(args.connections, args.megabytes, args.loop == "uvloop")
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
