"""The ``openai-bluegreen`` command line (also ``python -m openai_bluegreen``).

Subcommands:
    demo: a blue/green rollout under live traffic against two local simulated upstreams.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from ._demo import run_demo
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
    return value


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


def _run_demo(args: argparse.Namespace) -> int:
    run_demo(duration=args.duration, weight=args.weight, concurrency=args.concurrency,
             rate=args.rate, live=False if args.no_live else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="openai-bluegreen",
        description="Blue/green and canary rollouts of LLM models for openai SDK apps.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", required=True)

    demo = commands.add_parser(
        "demo",
        help="watch a rollout under live traffic (local simulated upstreams, no API keys)",
        description="Start two simulated OpenAI-compatible upstreams on loopback (blue: "
        "gpt-4.1, green: deepseek-v3.2), route an unchanged app's gpt-4.1 calls between them, "
        "and show per-environment requests, errors, p95 latency, time to first chunk, tokens, "
        "fallbacks and the green share once a second.",
    )
    demo.add_argument("--duration", type=_positive, default=20.0, metavar="SECONDS",
                      help="how long to send traffic (default: 20)")
    demo.add_argument("--weight", type=_percent, default=30.0, metavar="PERCENT",
                      help="percent of users routed to green, 0-100 (default: 30)")
    demo.add_argument("--concurrency", type=_at_least_one, default=8, metavar="THREADS",
                      help="threads making calls (default: 8)")
    demo.add_argument("--rate", type=_positive, default=100.0, metavar="CALLS_PER_S",
                      help="target calls per second over all threads (default: 100)")
    demo.add_argument("--no-live", action="store_true",
                      help="print one line per second instead of redrawing the screen")
    handler: Callable[[argparse.Namespace], int] = _run_demo
    demo.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; default: ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 on bad arguments (argparse exits with it), 130 when
        interrupted.
    """
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
