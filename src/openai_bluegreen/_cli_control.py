"""Operator subcommands: status, promote, pause, resume, rollback, set-weight, run-watcher.

They read the same config as the app (``--config`` or ``OPENAI_BLUEGREEN_CONFIG``) and act on
its state store. Exit codes: 0 done, 1 the action does not apply (e.g. resuming a promoted
rollout) or the store failed, 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._config import Config, load_config, mask_url
from ._control import REPLACED_NOTE, apply_action, default_actor, find_rollout
from ._errors import BlueGreenError, ConfigError
from ._exporters import ExporterError
from ._rollout import (
    Action,
    InvalidTransition,
    RolloutState,
    initial_state,
    revision_of,
    unusable,
)
from .stores import StoreUnavailable, StoreUnsupported, invalid_of, open_store

__all__ = ["add_control_commands"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _fmt_time(at: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):  # a stored time past what the OS can show
        return f"{at:<19g}"


MAX_WINDOW = 6 * 3600.0  # status/watch --window: read in at most REBUILD_PIECES queries


def _metrics(config: Config, window: float) -> tuple[dict[str, Any], str | None]:
    """Per rollout and environment, calls/errors/p95 over the last ``window`` seconds.

    Only with a shared metric source (Prometheus); ``local`` lives inside the app.
    """
    if config.metrics_source == "local":
        return {}, "metrics_source is 'local' (inside the app): no fleet metrics here"
    from .sources import SourceUnavailable
    from .sources.prometheus import REBUILD_PIECES, PrometheusSource

    now = time.time()
    # One look back over the whole window (at most MAX_WINDOW): enough pieces to read it now,
    # as a watcher rebuilding a step's history does; there is no next snapshot to catch up in.
    source = PrometheusSource(config.metrics_source, origin=now - window,
                              max_pieces=REBUILD_PIECES)
    try:
        snapshot = source.snapshot(now)
    except SourceUnavailable as exc:
        return {}, str(exc)
    finally:
        source.close()
    return {name: {"blue": stats.blue.to_dict(), "green": stats.green.to_dict()}
            for name, stats in snapshot.rollouts.items()}, None


def _state_rows(config: Config, window: float) -> tuple[list[dict[str, Any]], str | None]:
    store = open_store(config.state)
    try:
        stored = store.load_all()
    finally:
        store.close()
    metrics, problem = _metrics(config, window)
    invalid = invalid_of(stored)
    rows = []
    for rollout in config.rollouts:
        # A rollout without a schedule routes at its configured weight and never reads the
        # store: a state stored for it (it once had a schedule) is not what apps do.
        state = (stored.get(rollout.name) if rollout.schedule is not None else None) \
            or initial_state(rollout)
        # A state about another blue/green: apps with this config send that rollout to blue.
        other = bool(state.revision) and state.revision != revision_of(rollout)
        unreadable = None if rollout.schedule is None else invalid.get(rollout.name) or (
            None if other or rollout.name not in stored else unusable(rollout, state))
        rows.append({"name": rollout.name,
                     "phase": "unreadable" if unreadable else state.phase.value,
                     "step": None if unreadable else state.step,
                     "steps": rollout.schedule.steps if rollout.schedule else None,
                     "weight": None if unreadable else 0.0 if other else state.weight,
                     "version": None if unreadable else state.version,
                     "revision": state.revision, "other_candidate": other,
                     "unreadable": unreadable,
                     "blue": rollout.blue.model, "green": rollout.green.model,
                     "metrics": metrics.get(rollout.name),
                     "history": [] if unreadable else [h.to_dict() for h in state.history[-10:]]})
    return rows, problem


def _weight_cell(row: dict[str, Any]) -> str:
    return "?" if row["weight"] is None else f"{row['weight']:g}%"


def _env_cell(env: dict[str, Any] | None) -> str:
    if not env or not env.get("requests"):
        return "no calls"
    rate = env["errors"] / env["requests"]
    p95 = "-" if env.get("p95_s") is None else f"{env['p95_s'] * 1000:.0f}ms"
    return f"{env['requests']} calls, {rate:.1%} err, p95 {p95}"


def _notes(config: Config, rows: list[dict[str, Any]]) -> list[str]:
    """What the table cannot show: a store the CLI cannot share with the apps, and rollouts
    whose stored state is about another blue/green than this config's."""
    out = []
    if config.state == "memory":
        out.append(_MEMORY_NOTE)
    for row in rows:
        if row.get("unreadable"):
            out.append(f"{row['name']}: {row['unreadable']}; apps keep the weight they last "
                       "read (blue in an app started since), and no watcher decides for it "
                       "until it is fixed")
        elif row.get("other_candidate"):
            out.append(f"{row['name']}: the store's state is about another blue/green (revision "
                       f"{row['revision']}); apps with this config send it to blue until a "
                       "watcher with this config starts it over")
    return out


_MEMORY_WHY = ("'memory' (the default) lives inside each app's process, out of this command's "
               "reach; use a file:// or redis:// state store to see and steer running apps")
_MEMORY_NOTE = f"state: {_MEMORY_WHY} (shown is the configured start, not what apps do)"


def _render(config: Config, rows: list[dict[str, Any]], problem: str | None,
            window: float) -> str:
    out = [f"state store: {mask_url(config.state)}   metrics: {mask_url(config.metrics_source)}"
           + (f" (last {window:g}s)" if config.metrics_source != "local" else "")]
    if problem:
        out.append(f"metrics: {problem}")
    header = (f"{'ROLLOUT':<20} {'STATE':<12} {'STEP':<6} {'GREEN':>6}  "
              f"{'BLUE (calls, errors, p95)':<36} GREEN")
    out += ["", header]
    for row in rows:
        step = ("-" if row["step"] is None or row["steps"] is None
                else f"{row['step'] + 1}/{len(row['steps'])}")
        metrics = row["metrics"] or {}
        out.append(f"{row['name']:<20} {row['phase']:<12} {step:<6} {_weight_cell(row):>6}  "
                   f"{_env_cell(metrics.get('blue')):<36} {_env_cell(metrics.get('green'))}")
    out += _notes(config, rows)
    for row in rows:
        if row["history"]:
            out += ["", f"{row['name']} ({row['blue']} -> {row['green']}), last decisions:"]
            for entry in row["history"][-5:]:
                out.append(f"  {_fmt_time(entry['at'])}  {entry['action']:<10} "
                           f"{entry['weight']:>5g}%  {entry['actor']}: {entry['reason']}")
    return "\n".join(out)


_PHASE_STYLE = {"pending": "dim", "progressing": "cyan", "paused": "yellow",
                "promoted": "bold green", "rolled_back": "bold red", "unreadable": "bold red"}
_ACTION_STYLE = {"rollback": "red", "pause": "yellow", "promote": "green", "advance": "cyan",
                 "start": "cyan", "resume": "cyan", "set_weight": "magenta",
                 "restart": "magenta"}


def _rich() -> Any:
    """The ``rich`` module when installed (``openai-bluegreen[cli]``), else ``None``."""
    if os.environ.get("OPENAI_BLUEGREEN_PLAIN"):
        return None
    try:
        import rich
    except ImportError:
        return None
    return rich


def _console() -> Any:
    """A rich console; off a terminal, wide enough that no column is cut (scripts, logs)."""
    from rich.console import Console

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def _render_rich(config: Config, rows: list[dict[str, Any]], problem: str | None,
                 window: float, title: str = "") -> Any:
    """The status view as a rich renderable: a rollout table and the recent decisions."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble((title + "  ") if title else "", ("state ", "dim"),
                         mask_url(config.state), ("   metrics ", "dim"),
                         mask_url(config.metrics_source),
                         (f" (last {window:g}s)" if config.metrics_source != "local" else "",
                          "dim"))
    parts: list[Any] = [head]
    if problem:
        parts.append(Text(f"metrics: {problem}", style="yellow"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    # Names, states and weights never shrink; the metric columns wrap on a narrow terminal.
    widest = max([len(r["name"]) for r in rows] + [7])
    table.add_column("ROLLOUT", no_wrap=True, min_width=widest)
    table.add_column("STATE", no_wrap=True, min_width=11)
    table.add_column("STEP", no_wrap=True, min_width=4)
    table.add_column("GREEN", justify="right", no_wrap=True, min_width=5)
    table.add_column("BLUE calls, errors, p95", overflow="fold")
    table.add_column("GREEN calls, errors, p95", overflow="fold")
    for row in rows:
        step = ("-" if row["step"] is None or row["steps"] is None
                else f"{row['step'] + 1}/{len(row['steps'])}")
        metrics = row["metrics"] or {}
        table.add_row(row["name"], Text(row["phase"], style=_PHASE_STYLE.get(row["phase"], "")),
                      step, _weight_cell(row), _env_cell(metrics.get("blue")),
                      _env_cell(metrics.get("green")))
    parts.append(table)
    parts += [Text(note, style="yellow") for note in _notes(config, rows)]
    for row in rows:
        if not row["history"]:
            continue
        parts.append(Text(f"{row['name']} ({row['blue']} -> {row['green']}), last decisions:",
                          style="bold"))
        for entry in row["history"][-5:]:
            parts.append(Text.assemble(
                f"  {_fmt_time(entry['at'])}  ",
                (f"{entry['action']:<10}", _ACTION_STYLE.get(entry["action"], "")),
                f" {entry['weight']:>5g}%  ", (f"{entry['actor']}: ", "dim"), entry["reason"]))
    return Group(*parts)


def _status(args: argparse.Namespace) -> int:
    config = _load(args)
    rows, problem = _state_rows(config, args.window)
    if args.json:
        print(json.dumps({"state": mask_url(config.state),
                          "metrics_source": mask_url(config.metrics_source),
                          "metrics_problem": problem, "rollouts": rows}, indent=2))
        return EXIT_OK
    rich = _rich()
    if rich is None:
        print(_render(config, rows, problem, args.window))
    else:
        _console().print(_render_rich(config, rows, problem, args.window))
    return EXIT_OK


def _watch_frame(config: Config, window: float, rich: Any) -> Any:
    stamp = time.strftime("%H:%M:%S")
    title = f"openai-bluegreen watch {stamp} (Ctrl-C to stop)"
    try:
        rows, problem = _state_rows(config, window)
    except StoreUnavailable as exc:
        return f"{title}\nstate store: {exc}"
    if rich is None:
        return f"{title}\n{_render(config, rows, problem, window)}"
    return _render_rich(config, rows, problem, window, title=title)


def _watch(args: argparse.Namespace) -> int:
    config = _load(args)
    rich = _rich()
    try:
        if rich is not None and sys.stdout.isatty():
            from rich.live import Live

            with Live(_watch_frame(config, args.window, rich), auto_refresh=False,
                      screen=False) as live:
                while True:
                    time.sleep(args.interval)
                    live.update(_watch_frame(config, args.window, rich), refresh=True)
        while True:  # not a terminal (or no rich): one frame after another
            frame = _watch_frame(config, args.window, rich)
            if rich is None:
                print(frame, "\n", flush=True)
            else:
                _console().print(frame)
                print(flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _act(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        config = _load(args)
        rollout = find_rollout(config, args.rollout)
        if config.state == "memory":
            raise ConfigError([("state", _MEMORY_WHY)])
        store = open_store(config.state)
        try:
            state: RolloutState = apply_action(
                store, rollout, action, actor=args.actor or default_actor(),
                reason=args.reason, weight=getattr(args, "percent", None),
                restart=args.restart)
        finally:
            store.close()
        if args.json:
            print(json.dumps(state.to_dict(), indent=2))
        else:
            print(f"{rollout.name}: {state.phase.value}, green {state.weight:g}% "
                  f"(version {state.version})")
            if state.last is not None and f"({REPLACED_NOTE}: " in state.last.reason:
                print(f"{rollout.name}: the stored value was not a valid state; it was "
                      "replaced (its history is gone; the new entry says so)")
        return EXIT_OK
    return run


def _run_watcher(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.state == "memory":
        raise ConfigError([("state", _MEMORY_WHY)])
    if config.metrics_source == "local":
        print("error: run-watcher runs in its own process, and metrics_source 'local' reads only "
              "the metrics of the process it runs in. Point metrics_source at the Prometheus "
              "that scrapes your app (e.g. http://prometheus:9090), or leave the watcher inside "
              "the app: install() starts it for every rollout with a schedule.", file=sys.stderr)
        return EXIT_USAGE
    if not any(r.schedule is not None for r in config.rollouts):
        print("error: no rollout has a schedule: there is nothing to watch", file=sys.stderr)
        return EXIT_USAGE
    from opentelemetry.sdk.metrics import MeterProvider

    from ._exporters import Exporters
    from ._watcher import Watcher
    from .sources import open_source

    exporters = Exporters(args.prometheus_port,
                          bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")))
    meter_provider = MeterProvider(metric_readers=exporters.metric_readers())
    store = open_store(config.state)
    source = open_source(config.metrics_source)
    watcher = Watcher(config, store, source, meter_provider=meter_provider)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("openai_bluegreen.watcher")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    names = ", ".join(sorted(watcher.rollouts))
    print(f"watching {names}: state {store.url}, metrics {mask_url(config.metrics_source)}, "
          f"every {watcher.interval:g}s" + (f"; /metrics at {exporters.url}"
                                            if exporters.url else ""), flush=True)
    watcher.start()
    role = None
    try:
        while not stop.wait(0.5):
            now_role = "leader" if watcher.leader else "follower"
            if now_role != role:
                role = now_role
                print(f"{time.strftime('%H:%M:%S')} this watcher is the {role} "
                      f"({watcher.holder})", flush=True)
    finally:
        watcher.stop()  # hands the lease over, even with a look still stuck in a call
        source.close()
        store.close()
        meter_provider.shutdown()
        exporters.close()
    print("watcher stopped", flush=True)
    return EXIT_OK


# (error class, prefix, exit status), most specific first.
_ERRORS: tuple[tuple[type[BlueGreenError], str, int], ...] = (
    (ConfigError, "", EXIT_USAGE),
    (InvalidTransition, "", EXIT_FAILED),
    (StoreUnsupported, "state store: ", EXIT_USAGE),  # as install() has it: the config's
    (StoreUnavailable, "state store: ", EXIT_FAILED),
    (ExporterError, "", EXIT_FAILED),  # a port in use, a missing exporter package (as demo)
    (BlueGreenError, "", EXIT_USAGE),
)


def _guard(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BlueGreenError as exc:
            prefix, status = next((p, c) for kind, p, c in _ERRORS if isinstance(exc, kind))
            print(f"error: {prefix}{exc}", file=sys.stderr)
            return status
    return run


def _reason(text: str) -> str:
    """``--reason``: the history keeps who, why and when; an empty why is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must say why (it is kept in the rollout's history)")
    return text.strip()


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="config file (default: $OPENAI_BLUEGREEN_CONFIG or "
                        "./openai-bluegreen.yaml)")


MIN_REFRESH = 0.05  # seconds between two refreshes of watch: less reads the store in a busy loop


def _refresh_seconds(positive: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = positive(text)
        if value < MIN_REFRESH:
            raise argparse.ArgumentTypeError(f"must be at least {MIN_REFRESH:g} (got {text!r})")
        return value

    return parse


def add_control_commands(commands: Any, percent: Callable[[str], float],
                         positive: Callable[[str], float], port: Callable[[str], int]) -> None:
    """Register the operator subcommands on an ``add_subparsers()`` object.

    ``percent``, ``positive`` and ``port`` are the CLI's argument types (they name the bad value).
    """
    def common(parser: argparse.ArgumentParser, *, json_help: str) -> None:
        _config_arg(parser)
        parser.add_argument("--json", action="store_true", help=json_help)

    def window(text: str) -> float:
        value = positive(text)
        if value > MAX_WINDOW:
            raise argparse.ArgumentTypeError(
                f"must be at most {MAX_WINDOW:g} seconds, 6 hours of Prometheus samples "
                f"(got {text!r})")
        return value

    status = commands.add_parser("status", help="show every rollout's state, weight, "
                                 "per-environment calls/errors/p95 and recent decisions")
    common(status, json_help="print JSON for scripts")
    status.add_argument("--window", type=window, default=300.0, metavar="SECONDS",
                        help="metrics over the last SECONDS (default: 300)")
    status.set_defaults(handler=_guard(_status))

    watch = commands.add_parser("watch", help="the status view, refreshed until Ctrl-C")
    _config_arg(watch)
    watch.add_argument("--window", type=window, default=60.0, metavar="SECONDS",
                       help="metrics over the last SECONDS (default: 60)")
    watch.add_argument("--interval", type=_refresh_seconds(positive), default=2.0,
                       metavar="SECONDS", help="refresh every SECONDS (default: 2, at least "
                       f"{MIN_REFRESH:g})")
    watch.set_defaults(handler=_guard(_watch))

    helps = {Action.PROMOTE: "send every call to green now and end the rollout",
             Action.PAUSE: "hold the rollout at its current weight",
             Action.RESUME: "let the watcher drive a paused rollout again",
             Action.ROLLBACK: "send every call to blue now and end the rollout",
             Action.SET_WEIGHT: "set the percent to green by hand (pauses the schedule)"}
    for action, text in helps.items():
        parser = commands.add_parser(action.value.replace("_", "-"), help=text)
        parser.add_argument("rollout", help="rollout name")
        if action is Action.SET_WEIGHT:
            parser.add_argument("percent", type=percent, help="percent to green, 0-100")
        parser.add_argument("--reason", required=True, type=_reason,
                            help="why (kept in the rollout's history)")
        parser.add_argument("--actor", default=None,
                            help="who (default: $OPENAI_BLUEGREEN_ACTOR or user@host)")
        parser.add_argument("--restart", action="store_true",
                            help="if the store's state is about another blue/green than this "
                            "config's, start this config's rollout over first (default: "
                            "refuse; a rollback always applies to what the apps run, "
                            "--restart or not)")
        common(parser, json_help="print the new state as JSON")
        parser.set_defaults(handler=_guard(_act(action)))

    watcher = commands.add_parser(
        "run-watcher", help="run the rollout watcher as its own process",
        description="Decide the scheduled rollouts from the fleet's metrics in Prometheus and "
        "write the decisions to the shared state store. Several can run: one holds the lease "
        "and decides, the others take over when it stops. Stops on SIGINT/SIGTERM.")
    _config_arg(watcher)
    watcher.add_argument("--prometheus-port", type=port, default=None, metavar="PORT",
                         help="serve the watcher's own metrics (decisions, state, weight) on "
                         "127.0.0.1:PORT/metrics")
    watcher.set_defaults(handler=_guard(_run_watcher))
