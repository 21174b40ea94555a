"""Generate the Grafana dashboards in grafana/dashboards/ with grafana-foundation-sdk.

    .venv/bin/python tools/observability/dashboards.py          # (re)write the JSON files
    .venv/bin/python tools/observability/dashboards.py --check  # exit 1 if they are stale

Needs the ``dashboards`` extra (``pip install -e '.[dashboards]'``): grafana-foundation-sdk
1769699379!11.6.0, the SDK's build for Grafana 11.6.x (compose.yaml runs grafana/grafana:11.6.16).

Every query uses the Prometheus names of DESIGN.md's telemetry contract; tests/test_observability.py
runs each of them against a real Prometheus that scraped the demo and fails on an empty result.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import statetimeline as state_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "grafana" / "dashboards"

#: The uid of the provisioned Prometheus datasource (grafana/provisioning/datasources/).
PROMETHEUS_UID = "bluegreen-prometheus"
ROLLOUT_UID = "bluegreen-rollout"
FLEET_UID = "bluegreen-fleet"
TAGS = ["openai-bluegreen"]

DS = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
RI = "$__rate_interval"

# Metric names as Prometheus sees them (DESIGN.md, telemetry contract).
CALLS = "gen_ai_client_operation_duration_seconds_count"
DURATION = "gen_ai_client_operation_duration_seconds_bucket"
TTFC = "gen_ai_client_operation_time_to_first_chunk_seconds_bucket"
TOKENS = "gen_ai_client_token_usage_sum"
FALLBACKS = "bluegreen_fallbacks_total"
WEIGHT = "bluegreen_rollout_weight"
STATE = "bluegreen_rollout_state"
DECISIONS = "bluegreen_rollout_decisions_total"

ENV_COLORS = {"blue": "blue", "green": "green"}
STATES = ("pending", "progressing", "paused", "promoted", "rolled_back")
STATE_COLORS = {"pending": "text", "progressing": "blue", "paused": "yellow",
                "promoted": "green", "rolled_back": "red"}
TOKENS_UNIT = "suffix: tokens/s"
RATIO_UNIT = "suffix:\u00d7"  # the multiplication sign
FAILED = 'error_type!=""'
SUCCEEDED = 'error_type=""'


def sel(*matchers: str) -> str:
    """A label selector body from non-empty matchers."""
    return "{" + ", ".join(m for m in matchers if m) + "}"


def error_ratio(by: str, where: str) -> str:
    """Failed / all calls per group; a group without failures shows 0, not a gap."""
    calls = f"sum by ({by}) (rate({CALLS}{sel(where)}[{RI}]))"
    errors = f"sum by ({by}) (rate({CALLS}{sel(where, FAILED)}[{RI}]))"
    return f"({errors} or 0 * {calls})\n/\n{calls}"


def quantile(q: float, metric: str, by: str, where: str) -> str:
    return f"histogram_quantile({q:g}, sum by ({by}, le) (rate({metric}{sel(where)}[{RI}])))"


def p95_ratio(by: str, where: str) -> str:
    """Green's p95 latency of successful calls over blue's (the alert's and watcher's signal)."""
    green = quantile(0.95, DURATION, by,
                     ", ".join(m for m in (where, 'bluegreen_environment="green"', SUCCEEDED) if m))
    blue = quantile(0.95, DURATION, by,
                    ", ".join(m for m in (where, 'bluegreen_environment="blue"', SUCCEEDED) if m))
    return f"{green}\n/\n{blue}"


def state_code(by: str, where: str) -> str:
    """The current state as a number 1..5 (value mappings turn it back into its name)."""
    parts = [f"{STATE}{sel(where, 'bluegreen_state=' + json.dumps(s))} * {i}"
             for i, s in enumerate(STATES, start=1)]
    return f"max by ({by}) (\n  " + "\n  or ".join(parts) + "\n)" if by else \
        "max(\n  " + "\n  or ".join(parts) + "\n)"


def decisions_expr(where: str, decision: str) -> str:
    """Decisions in each window, counting a counter series' first appearance as a decision.

    ``increase()`` ignores a series' first sample, and each decision kind starts its own
    counter series at 1, so the first rollback would never show; the ``unless ... offset``
    term catches series that did not exist one window earlier.
    """
    matchers = sel(where, decision)
    by = "bluegreen_rollout, bluegreen_decision"
    return (f"sum by ({by}) (increase({DECISIONS}{matchers}[{RI}])) > 0\n"
            f"or\nsum by ({by}) ({DECISIONS}{matchers} unless {DECISIONS}{matchers} "
            f"offset {RI})")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


def _targets(queries: Sequence[Query]) -> list[prom_b.Dataquery]:
    out = []
    for index, q in enumerate(queries):
        target = prom_b.Dataquery().expr(q.expr).ref_id(chr(ord("A") + index)).range()
        out.append(target.legend_format(q.legend or "__auto"))
    return out


def _env_colors(panel: Any, suffixes: bool = False) -> Any:
    for env, color in ENV_COLORS.items():
        fixed = [dash_m.DynamicConfigValue(id_val="color",
                                           value={"mode": "fixed", "fixedColor": color})]
        if suffixes:
            panel = panel.override_by_regexp(f"^{env}( .*)?$", fixed)
        else:
            panel = panel.override_by_name(env, fixed)
    return panel


def timeseries(title: str, description: str, unit: str, queries: Sequence[Query], *,
               width: int = 12, height: int = 8, env_colors: bool = False,
               suffixed: bool = False, min_val: float | None = None,
               max_val: float | None = None, stepped: bool = False,
               threshold: float | None = None) -> ts_b.Panel:
    panel = (ts_b.Panel().title(title).description(description).unit(unit).datasource(DS)
             .span(width).height(height).targets(_targets(queries))
             .line_width(2).fill_opacity(10).show_points(common_m.VisibilityMode.NEVER)
             .legend(common_b.VizLegendOptions().display_mode(common_m.LegendDisplayMode.LIST)
                     .placement(common_m.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common_b.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI)
                      .sort(common_m.SortOrder.DESCENDING)))
    if stepped:
        panel = panel.line_interpolation(common_m.LineInterpolation.STEP_AFTER)
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if threshold is not None:
        panel = (panel.thresholds(dash_b.ThresholdsConfig()
                                  .mode(dash_m.ThresholdsMode.ABSOLUTE)
                                  .steps([dash_m.Threshold(value=None, color="transparent"),
                                          dash_m.Threshold(value=threshold, color="red")]))
                 .thresholds_style(common_b.GraphThresholdsStyleConfig()
                                   .mode(common_m.GraphThresholdsStyleMode.DASHED)))
    if env_colors or suffixed:
        panel = _env_colors(panel, suffixes=suffixed)
    return panel


def state_panel(title: str, description: str, query: Query, *, width: int = 12,
                height: int = 8) -> state_b.Panel:
    mapping = dash_m.ValueMap(options={
        str(i): dash_m.ValueMappingResult(text=s, color=STATE_COLORS[s], index=i - 1)
        for i, s in enumerate(STATES, start=1)})
    return (state_b.Panel().title(title).description(description).unit("none")
            .datasource(DS).span(width).height(height).targets(_targets([query]))
            .mappings([mapping]).show_value(common_m.VisibilityMode.NEVER)
            .merge_values(True).fill_opacity(80)
            .color_scheme(dash_b.FieldColor().mode(dash_m.FieldColorModeId.FIXED)
                          .fixed_color("text"))
            .legend(common_b.VizLegendOptions().show_legend(False)))


def env_now(env: str, where: str) -> stat_b.Panel:
    """One environment's request rate, error ratio and p95 latency over the last window."""
    env_where = f'{where}, bluegreen_environment="{env}"'
    calls = f"sum(rate({CALLS}{sel(env_where)}[{RI}]))"
    errors = f"sum(rate({CALLS}{sel(env_where, FAILED)}[{RI}]))"
    queries = [
        Query(calls, "requests"),
        Query(f"({errors} or 0 * {calls})\n/\n{calls}", "error ratio"),
        Query(f"histogram_quantile(0.95, sum by (le) (rate({DURATION}"
              f"{sel(env_where, SUCCEEDED)}[{RI}])))", "p95 latency"),
    ]
    unit = [dash_m.DynamicConfigValue(id_val="unit", value=u) for u in ("percentunit", "s")]
    return (stat_b.Panel().title(f"{env.capitalize()} now")
            .description(f"{env.capitalize()}'s request rate, error ratio and p95 latency of "
                         "successful calls over the last rate window.")
            .unit("reqps").datasource(DS).span(6).height(6).targets(_targets(queries))
            .override_by_query("B", [unit[0]]).override_by_query("C", [unit[1]])
            .graph_mode(common_m.BigValueGraphMode.AREA)
            .color_mode(common_m.BigValueColorMode.VALUE)
            .color_scheme(dash_b.FieldColor().mode(dash_m.FieldColorModeId.FIXED)
                          .fixed_color(ENV_COLORS[env]))
            .text_mode(common_m.BigValueTextMode.VALUE_AND_NAME)
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"])))


class _PromAnnotation(dash_m.AnnotationQuery):
    """A Prometheus annotation with the fields the 11.6 SDK model lacks (title/tags/text)."""

    def __init__(self, title_format: str, text_format: str, tag_keys: str,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.title_format = title_format
        self.text_format = text_format
        self.tag_keys = tag_keys

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update({"titleFormat": self.title_format, "textFormat": self.text_format,
                        "tagKeys": self.tag_keys, "useValueForTime": False})
        return payload


class _Built:
    """Adapts a finished model to the builder protocol the dashboard builder expects."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def build(self) -> Any:
        return self._model


def annotations(where: str) -> list[_Built]:
    common = {"datasource": DS, "enable": True, "hide": False, "built_in": 0}
    return [
        _Built(_PromAnnotation(
            name="Watcher decisions", icon_color="blue",
            expr=decisions_expr(where, 'bluegreen_decision!~"hold|rollback"'),
            title_format="{{bluegreen_decision}}", text_format="rollout {{bluegreen_rollout}}",
            tag_keys="bluegreen_rollout,bluegreen_decision", **common)),
        _Built(_PromAnnotation(
            name="Rollbacks", icon_color="red",
            expr=decisions_expr(where, 'bluegreen_decision="rollback"'),
            title_format="rollback", text_format="rollout {{bluegreen_rollout}} rolled back",
            tag_keys="bluegreen_rollout,bluegreen_decision", **common)),
    ]


def datasource_variable() -> dash_b.DatasourceVariable:
    return (dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .current(dash_m.VariableOption(selected=True, text="Prometheus",
                                           value=PROMETHEUS_UID)))


def _dashboard(uid: str, title: str, description: str) -> dash_b.Dashboard:
    return (dash_b.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .editable().tooltip(dash_m.DashboardCursorSync.CROSSHAIR).refresh("30s")
            .time("now-1h", "now").timezone("browser")
            .with_variable(datasource_variable()))


def rollout_dashboard() -> dash_m.Dashboard:
    r = 'bluegreen_rollout="$rollout"'
    env = "bluegreen_environment"
    board = (_dashboard(ROLLOUT_UID, "openai-bluegreen: rollout",
                        "One blue/green rollout: green's share and state with the watcher's "
                        "decisions, and blue against green on traffic, errors, latency, time "
                        "to first chunk, tokens and fallbacks.")
             .with_variable(dash_b.QueryVariable("rollout").label("Rollout").datasource(DS)
                            .query(f"label_values({WEIGHT}, bluegreen_rollout)")
                            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
                            .sort(dash_m.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC))
             .link(dash_b.DashboardLink("Fleet overview").type(dash_m.DashboardLinkType.LINK)
                   .url(f"/d/{FLEET_UID}").keep_time(True).include_vars(False)
                   .tooltip("All rollouts")))
    for annotation in annotations(r):
        board = board.annotation(annotation)
    board = (board
        .with_row(dash_b.Row("Rollout"))
        .with_panel(timeseries(
            "Green weight",
            "Share of calls routed to green (0 = all blue, 100 % = promoted). Markers: the "
            "watcher's decisions (blue) and rollbacks (red).",
            "percentunit", [Query(f"max({WEIGHT}{sel(r)})", "green weight")],
            min_val=0, max_val=1, stepped=True, width=12))
        .with_panel(state_panel(
            "Rollout state",
            "The rollout's state over time: pending, progressing, paused, promoted or "
            "rolled back (bluegreen_rollout_state).",
            Query(state_code("", r), "state"), width=12))
        .with_panel(env_now("blue", r))
        .with_panel(env_now("green", r))
        .with_panel(timeseries(
            "Watcher decisions",
            "Decisions per second by kind. The watcher decides once per analysis interval, "
            "holds included, so a flat zero means no watcher is running for this rollout.",
            "ops", [Query(f"sum by (bluegreen_decision) (rate({DECISIONS}{sel(r)}[{RI}]))",
                          "{{bluegreen_decision}}")], width=12, height=6))
        .with_row(dash_b.Row("Traffic and errors"))
        .with_panel(timeseries(
            "Request rate",
            "Calls per second to each environment (every outcome).", "reqps",
            [Query(f"sum by ({env}) (rate({CALLS}{sel(r)}[{RI}]))", f"{{{{{env}}}}}")],
            env_colors=True, width=8))
        .with_panel(timeseries(
            "Error ratio",
            "Share of calls that failed (error.type set), per environment.", "percentunit",
            [Query(error_ratio(env, r), f"{{{{{env}}}}}")], env_colors=True, min_val=0,
            width=8))
        .with_panel(timeseries(
            "Error ratio by error.type",
            "Share of each environment's calls that failed, split by error.type (the "
            "exception class, or the HTTP status class).", "percentunit",
            [Query(f"sum by ({env}, error_type) (rate({CALLS}{sel(r, FAILED)}"
                   f"[{RI}]))\n/ on ({env}) group_left\n"
                   f"sum by ({env}) (rate({CALLS}{sel(r)}[{RI}]))",
                   f"{{{{{env}}}}} {{{{error_type}}}}")], min_val=0, width=8))
        .with_row(dash_b.Row("Latency"))
        .with_panel(timeseries(
            "Latency p50 / p95 / p99",
            "Duration of successful calls (gen_ai.client.operation.duration), quantiles "
            "interpolated within the semantic-convention buckets.", "s",
            [Query(quantile(q, DURATION, env, f'{r}, {SUCCEEDED}'),
                   f"{{{{{env}}}}} p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
            suffixed=True, width=8))
        .with_panel(timeseries(
            "Time to first chunk p95",
            "p95 time from sending a streaming request to its first chunk.", "s",
            [Query(quantile(0.95, TTFC, env, r), f"{{{{{env}}}}}")], env_colors=True,
            width=8))
        .with_panel(timeseries(
            "Green / blue p95 latency",
            "Green's p95 latency of successful calls divided by blue's; the dashed line is "
            "the BlueGreenGreenLatencyHigh threshold (1.5).", RATIO_UNIT,
            [Query(p95_ratio("bluegreen_rollout", r), "green / blue")], threshold=1.5,
            width=8))
        .with_row(dash_b.Row("Tokens and fallbacks"))
        .with_panel(timeseries(
            "Tokens per second",
            "Input and output tokens per second reported by the provider "
            "(gen_ai.client.token.usage), per environment.", TOKENS_UNIT,
            [Query(f"sum by ({env}, gen_ai_token_type) (rate({TOKENS}{sel(r)}[{RI}]))",
                   f"{{{{{env}}}}} {{{{gen_ai_token_type}}}}")], suffixed=True, width=12))
        .with_panel(timeseries(
            "Fallbacks to blue",
            "Green calls per second that failed before any byte reached the caller and were "
            "retried on blue, by error.type.", "reqps",
            [Query(f"sum by (error_type) (rate({FALLBACKS}{sel(r)}[{RI}]))",
                   "{{error_type}}")], width=12)))
    return board.build()


def fleet_dashboard() -> dash_m.Dashboard:
    by = "bluegreen_rollout"
    board = (_dashboard(FLEET_UID, "openai-bluegreen: fleet overview",
                        "Every rollout at once: weights, states, traffic, errors, latency "
                        "ratio, fallbacks, watcher activity and firing alerts. Click a series "
                        "to open its rollout.")
             .link(dash_b.DashboardLink("Rollout detail").type(dash_m.DashboardLinkType.LINK)
                   .url(f"/d/{ROLLOUT_UID}").keep_time(True).tooltip("One rollout")))
    for annotation in annotations(""):
        board = board.annotation(annotation)
    detail = [dash_b.DashboardLink("Open rollout ${__field.labels.bluegreen_rollout}")
              .url(f"/d/{ROLLOUT_UID}?var-rollout=${{__field.labels.bluegreen_rollout}}"
                   "&${__url_time_range}")]
    board = (board
        .with_panel(timeseries(
            "Green weight by rollout", "Share of calls routed to green, per rollout.",
            "percentunit", [Query(f"max by ({by}) ({WEIGHT})", f"{{{{{by}}}}}")],
            min_val=0, max_val=1, stepped=True).data_links(detail))
        .with_panel(state_panel(
            "State by rollout",
            "Each rollout's state over time: pending, progressing, paused, promoted or "
            "rolled back.", Query(state_code(by, ""), f"{{{{{by}}}}}")).data_links(detail))
        .with_panel(timeseries(
            "Request rate by rollout",
            "Calls per second per rollout and environment.", "reqps",
            [Query(f"sum by ({by}, bluegreen_environment) (rate({CALLS}[{RI}]))",
                   f"{{{{{by}}}}} {{{{bluegreen_environment}}}}")]).data_links(detail))
        .with_panel(timeseries(
            "Error ratio by rollout",
            "Share of failed calls per rollout and environment.", "percentunit",
            [Query(error_ratio(f"{by}, bluegreen_environment", ""),
                   f"{{{{{by}}}}} {{{{bluegreen_environment}}}}")], min_val=0)
            .data_links(detail))
        .with_panel(timeseries(
            "Green / blue p95 latency by rollout",
            "Green's p95 latency of successful calls divided by blue's, per rollout; the "
            "dashed line is the alert threshold (1.5).", RATIO_UNIT,
            [Query(p95_ratio(by, ""), f"{{{{{by}}}}}")], threshold=1.5).data_links(detail))
        .with_panel(timeseries(
            "Fallbacks by rollout",
            "Green calls per second retried on blue, per rollout.", "reqps",
            [Query(f"sum by ({by}) (rate({FALLBACKS}[{RI}]))", f"{{{{{by}}}}}")])
            .data_links(detail))
        .with_panel(timeseries(
            "Watcher decisions by rollout",
            "Watcher decisions per second per rollout, holds included: zero means no "
            "watcher is deciding for that rollout.", "ops",
            [Query(f"sum by ({by}) (rate({DECISIONS}[{RI}]))", f"{{{{{by}}}}}")])
            .data_links(detail))
        .with_panel(timeseries(
            "Firing rollout alerts",
            "Alerts from prometheus/alerts.yml that are firing, per rollout (needs the "
            "rules loaded into this Prometheus).", "short",
            [Query('count by (alertname, bluegreen_rollout) '
                   '(ALERTS{alertname=~"BlueGreen.+", alertstate="firing"})',
                   "{{bluegreen_rollout}} {{alertname}}")], min_val=0)
            .draw_style(common_m.GraphDrawStyle.BARS)))
    return board.build()


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    boards = {"bluegreen-rollout.json": rollout_dashboard(),
              "bluegreen-fleet.json": fleet_dashboard()}
    return {name: json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True,
                             ensure_ascii=False) + "\n"
            for name, board in boards.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run tools/observability/dashboards.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
