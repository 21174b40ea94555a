"""The ``openai-bluegreen`` command line (also ``python -m openai_bluegreen``).

Subcommands:
    demo: a progressive rollout under live traffic against two local simulated upstreams.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._cli_control import add_control_commands
from ._demo import DEFAULT_REPORT, SCENARIOS, SEED, run_demo
from ._exporters import ExporterError
from ._version import __version__

__all__ = ["build_parser", "main"]


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (got {text!r})")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 (got {text!r})")
    if value > _LARGEST:  # seconds to sleep, calls per second: past this, a typo
        raise argparse.ArgumentTypeError(f"must be at most {_LARGEST:g} (got {text!r})")
    return value


_LARGEST = 1e9


def _percent(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100 (got {text!r})")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text!r})")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number (got {text!r})") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535 (got {text!r})")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None


def _report(text: str) -> str:
    """``--report``: a file the run can write at its end, checked before the run starts."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"is a directory: name the HTML file (got {text!r})")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"its directory does not exist (got {text!r})")
    if not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"its directory is not writable (got {text!r})")
    if path.exists():
        # Opened the way the end of the run writes it, without truncating or blocking: a
        # read-only file fails here, and so does a named pipe nobody reads (the write at the
        # end would wait for a reader for ever).
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot be written: {exc.strerror or exc} (got {text!r})") from None
    return text


def _run_demo(args: argparse.Namespace) -> int:
    try:
        run = run_demo(args.scenario, duration=args.duration, rate=args.rate,
                       concurrency=args.concurrency, step_seconds=args.step_seconds,
                       seed=args.seed, live=False if args.no_live else None,
                       report=args.report, prometheus_port=args.prometheus_port)
    except ExporterError as exc:
        print(f"openai-bluegreen demo: error: {exc}", file=sys.stderr)
        return 1
    for result in run.results:
        if not result.ok:
            print(f"openai-bluegreen demo: scenario {result.scenario.name!r} did not end as "
                  f"expected: {result.why}", file=sys.stderr)
    if run.report_error is not None:
        print(f"openai-bluegreen demo: error: {run.report_error}", file=sys.stderr)
    if any(r.interrupted for r in run.results):
        return 130
    return 0 if run.ok and run.report_error is None else 1


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="watch a progressive rollout judged by the watcher (local simulated upstreams, "
        "no API keys)",
        description="Start two simulated OpenAI-compatible upstreams on loopback (blue: "
        "gpt-4.1, green: deepseek-v3.2), route an unchanged app's gpt-4.1 calls between them "
        "with a scheduled rollout (5% -> 25% -> 50% -> 100%), and watch the watcher "
        "promote or roll back green. Scenarios: healthy (green is promoted), errors (green's "
        "error rate rises to 10%: rolled back), slow (green's latency doubles: rolled back). "
        "Ends with a summary and an HTML report with plots; exit status 0 when every scenario "
        "ended as expected, 1 otherwise.",
    )
    demo.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="healthy",
                      help="what green does; 'all' runs the three in sequence "
                      "(default: healthy)")
    demo.add_argument("--duration", type=_positive, default=60.0, metavar="SECONDS",
                      help="longest run per scenario; a run ends ~2 s after the rollout is "
                      "promoted or rolled back (default: 60)")
    demo.add_argument("--rate", type=_positive, default=200.0, metavar="CALLS_PER_S",
                      help="target calls per second over all threads (default: 200)")
    demo.add_argument("--concurrency", type=_at_least_one, default=32, metavar="THREADS",
                      help="threads making calls (default: 32)")
    demo.add_argument("--step-seconds", type=_positive, default=5.0, metavar="SECONDS",
                      help="minimum time per rollout step (default: 5)")
    demo.add_argument("--seed", type=_whole, default=SEED, metavar="N",
                      help=f"seed of the simulated upstreams and callers (default: {SEED})")
    demo.add_argument("--report", type=_report, default=DEFAULT_REPORT, metavar="PATH",
                      help=f"where to write the HTML report (default: ./{DEFAULT_REPORT})")
    demo.add_argument("--no-live", action="store_true",
                      help="print compact lines instead of redrawing the screen")
    demo.add_argument("--prometheus-port", type=_port, default=None, metavar="PORT",
                      help="serve Prometheus /metrics on 127.0.0.1:PORT while running (needs "
                      "openai-bluegreen[prometheus])")
    handler: Callable[[argparse.Namespace], int] = _run_demo
    demo.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="openai-bluegreen",
        description="Blue/green and canary rollouts of LLM models for openai SDK apps.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", required=True)

    _add_demo(commands)
    add_control_commands(commands, _percent, _positive, _port)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; default: ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 on bad arguments (argparse exits with it), 130 when
        interrupted, 141 when the reader of its output went away.
    """
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as tools do
        # Python flushes stdout again at exit, which would fail and print a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a process the pipe ended
