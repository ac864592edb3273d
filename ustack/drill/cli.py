"""``ustack drill``: run packetdrill scripts against ustack, the Linux kernel, or both.

    ustack drill SCRIPT.pkt... [--target ustack|linux|both] [--tolerance-usecs N]
                               [-D NAME=value] [--strict] [-j N] [-v] [--PACKETDRILL_OPTION=..]

One line per script and target: ``PASS``, ``FAIL`` (with the script line, what was
expected, what came instead and the connections' state), ``SKIP`` (a ``// ustack-only:``
script on Linux), ``XFAIL``/``XPASS`` (a ``// ustack-known-diff:`` script on ustack: the
difference is known and still there / is gone, remove the tag).  The exit status is 1 when
anything failed (FAIL, XPASS, or a target that could not run), 2 for usage errors.

packetdrill's own options (``--ip_version=ipv4``, ``--mss=1000``, ...) may be given too: they
apply to every script, over the script's own, as on packetdrill's command line.

Targets: ``ustack`` runs in virtual time (milliseconds for a 60 s script); ``linux`` needs
root: it makes a private network namespace and a TUN device per script and runs in real time
(default tolerance 25 ms, see :mod:`ustack.drill.run_linux`).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, TextIO

from .ast import KNOWN_OPTIONS
from .parser import DrillSyntaxError, parse_file
from .run_ustack import Failure, RunResult, ScriptTags, read_tags, run_ustack

__all__ = ["main", "run_one", "run_many", "Outcome"]


@dataclass
class Outcome:
    """A RunResult judged against the script's tags."""

    result: RunResult
    status: str                       # PASS FAIL SKIP XFAIL XPASS
    reason: str = ""

    @property
    def bad(self) -> bool:
        return self.status in ("FAIL", "XPASS")


def run_one(path: str, target: str, *, tolerance_us: int | None = None,
            defines: dict[str, str] | None = None, strict_end: bool = False,
            verbose: bool = False, options: dict[str, str | None] | None = None) -> Outcome:
    """Run one script on one target and judge it by its tags."""
    tags = read_tags(path) if os.path.isfile(path) else ScriptTags()
    if target == "linux" and tags.ustack_only:
        return Outcome(RunResult(path, target, True), "SKIP", f"ustack-only: {tags.ustack_only}")
    try:
        script = parse_file(path, defines=defines, options=options)
    except DrillSyntaxError as e:
        r = RunResult(path, target, False, Failure(e.line, "", f"syntax error: {e.message}",
                                                   kind="error"))
        return Outcome(r, "FAIL")
    except OSError as e:
        r = RunResult(path, target, False, Failure(0, "", f"cannot read the script: {e}",
                                                   kind="error"))
        return Outcome(r, "FAIL")
    if target == "ustack":
        res = run_ustack(script, tolerance_us=tolerance_us, strict_end=strict_end,
                         verbose=False)
    else:
        from .run_linux import run_linux
        res = run_linux(script, tolerance_us=tolerance_us, strict_end=strict_end,
                        verbose=False)
    if target == "ustack" and tags.ustack_known_diff:
        if res.ok:
            return Outcome(res, "XPASS", f"known difference gone, remove the tag: "
                                         f"{tags.ustack_known_diff}")
        return Outcome(res, "XFAIL", f"known difference: {tags.ustack_known_diff}")
    return Outcome(res, "PASS" if res.ok else "FAIL")


def _run_job(args: tuple[str, str, dict]) -> Outcome:
    path, target, kw = args
    return run_one(path, target, **kw)


def run_many(jobs: Iterable[tuple[str, str]], processes: int = 1, **kw: object
             ) -> Iterator[Outcome]:
    """Run (script, target) jobs, in order.  With ``processes`` > 1 they run in that many
    worker processes (spawned: each linux run then has the CPU and the interpreter to
    itself, which real-time runs need; a namespace belongs to the worker's thread)."""
    work = [(p, t, dict(kw)) for p, t in jobs]
    if processes <= 1 or len(work) <= 1:
        for w in work:
            yield _run_job(w)
        return
    ctx = multiprocessing.get_context("spawn")
    n = min(processes, len(work))
    barrier = ctx.Barrier(n)
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_warm_up,
                             initargs=(barrier,)) as pool:
        yield from pool.map(_run_job, work)


def _warm_up(barrier: object) -> None:
    """Worker start: import what the runs need, then wait for the other workers, so that
    no real-time run shares the CPUs with interpreters still starting up."""
    import ustack.drill.run_linux  # noqa: F401
    import ustack.netns  # noqa: F401
    try:
        import pyroute2  # noqa: F401
        import pytun_pmd3  # noqa: F401
    except ImportError:
        pass
    try:
        barrier.wait(timeout=60)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a broken barrier only costs timing accuracy
        pass


def _report(o: Outcome, out: TextIO, verbose: bool) -> None:
    r = o.result
    head = f"{o.status:<5} {r.path} [{r.target}]"
    if o.status not in ("SKIP",):
        head += f"  {r.elapsed_s:.3f} s"
        if r.target == "ustack":
            head += f" (script time {r.script_s:.3f} s)"
    if o.reason:
        head += f"  {o.reason}"
    print(head, file=out)
    if r.failure is not None and (o.status in ("FAIL", "XFAIL") or verbose):
        print(r.failure.render("    "), file=out)
    if verbose or o.status == "FAIL":
        for w in r.warnings:
            print(f"    warning: {w}", file=out)
    if verbose:
        for n in r.notes:
            print(f"    note: {n}", file=out)
        if r.code_blocks_skipped:
            print(f"    {r.code_blocks_skipped} %{{ }}% code block(s) skipped", file=out)
        for t in r.trace:
            print(f"    | {t}", file=out)
    elif r.code_blocks_skipped:
        print(f"    warning: {r.code_blocks_skipped} %{{ }}% code block(s) skipped", file=out)


def _parse_defines(items: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            parser.error(f"-D wants NAME=value, not {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="ustack drill",
        description="Run packetdrill scripts against ustack (virtual time) and/or the Linux "
                    "kernel (private network namespace, real time).")
    parser.add_argument("scripts", nargs="+", metavar="SCRIPT.pkt")
    parser.add_argument("--target", choices=("ustack", "linux", "both"), default="both")
    parser.add_argument("--tolerance-usecs", "--tolerance_usecs", type=int, default=None,
                        dest="tolerance", metavar="N",
                        help="timing tolerance in microseconds for every script (default: "
                             "the script's --tolerance_usecs, 4000; on linux at least 25000)")
    parser.add_argument("-D", "--define", action="append", default=[], metavar="NAME=value",
                        help="define a symbol for the scripts (as packetdrill's -D)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on packets sent after the last scripted event (packetdrill "
                             "ignores them)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="run this many scripts at once (each linux run has its own "
                             "namespace)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show warnings, notes and the packet/syscall trace of every run")
    args, extra = parser.parse_known_args(argv)
    # packetdrill's own options (--ip_version=ipv4, --mss=1000 ...) pass through to every
    # script, overriding the script's, as on packetdrill's command line
    options: dict[str, str | None] = {}
    for item in extra:
        m = re.fullmatch(r"--([A-Za-z0-9_]+)(?:=(.*))?", item)
        if m is None or m.group(1) not in KNOWN_OPTIONS:
            parser.error(f"unrecognized argument: {item}")
        options[m.group(1)] = m.group(2)
    if args.tolerance is not None and args.tolerance < 0:
        parser.error("--tolerance-usecs must be >= 0")
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    defines = _parse_defines(args.define, parser)
    targets = ["ustack", "linux"] if args.target == "both" else [args.target]
    for p in args.scripts:
        if not os.path.isfile(p):
            parser.error(f"no such script: {p}")

    jobs = [(p, t) for p in args.scripts for t in targets]
    results: dict[tuple[str, str], Outcome] = {}
    for job, o in zip(jobs, run_many(jobs, args.jobs, tolerance_us=args.tolerance,
                                     defines=defines, strict_end=args.strict,
                                     verbose=args.verbose, options=options or None)):
        results[job] = o
        _report(o, out, args.verbose)
        out.flush()
    outcomes = [results[j] for j in jobs]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(outcomes)} run(s): {summary}", file=out)
    return 1 if any(o.bad for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
