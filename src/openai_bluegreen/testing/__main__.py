"""``python -m openai_bluegreen.testing``: run a simulated upstream in the foreground."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from ._process import decode
from ._server import SimulatedUpstream


def _error_rate(text: str) -> tuple[int, float]:
    status, sep, rate = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(status), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be STATUS=P, e.g. 503=0.05 (got {text!r})") from None


def _serve_commands(server: SimulatedUpstream) -> None:
    """Answer one JSON command per line of standard input until it closes:
    ``{"configure": {...}}`` -> ``{"ok": true}`` or ``{"error": "...", "kind": "ValueError"}``."""
    for line in sys.stdin:
        try:
            command = json.loads(line)
            if not isinstance(command, dict) or not isinstance(command.get("configure"), dict):
                raise ValueError(f"unknown command {line.strip()[:200]!r}: expected "
                                 '{"configure": {...}}')
            server.configure(**decode(command["configure"]))
        except (TypeError, ValueError) as exc:  # JSON errors are ValueErrors
            answer: dict[str, object] = {"error": str(exc), "kind": type(exc).__name__}
        else:
            answer = {"ok": True}
        print(json.dumps(answer), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openai_bluegreen.testing",
                                     description="Serve a simulated OpenAI-compatible API.")
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="median seconds")
    parser.add_argument("--latency-sigma", type=float, default=0.0)
    parser.add_argument("--ttfc", type=float, default=0.0, help="median seconds to first chunk")
    parser.add_argument("--output-tokens", type=int, default=8)
    parser.add_argument("--error-rate", action="append", default=[], metavar="STATUS=P",
                        type=_error_rate, help="e.g. 503=0.05 (repeatable)")
    parser.add_argument("--control", action="store_true",
                        help="take JSON commands on standard input, one per line, and stop "
                             "when it closes (used by UpstreamProcess)")
    args = parser.parse_args(argv)
    if args.control:
        # A terminal's Ctrl-C reaches the whole foreground process group, this child too; it
        # is the parent's to handle (the demo stops early and reports), and the child stops
        # when the parent closes its standard input.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server = SimulatedUpstream(args.name, host=args.host, port=args.port,
                                   latency=args.latency, latency_sigma=args.latency_sigma,
                                   ttfc=args.ttfc, output_tokens=args.output_tokens,
                                   error_rates=dict(args.error_rate))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        server.start()
    except OSError as exc:  # the port is taken, the host is not ours
        print(f"{parser.prog}: error: cannot serve on {args.host}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps({"name": server.name, "base_url": server.base_url, "port": server.port}),
          flush=True)
    if args.control:
        try:
            _serve_commands(server)
        finally:
            server.stop()
        return 0
    try:
        assert server._thread is not None
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
