"""One replica of a fleet app for the fleet tests: real openai calls through the plugin.

Serves its metrics on 127.0.0.1:<metrics-port>/metrics (OpenTelemetry Prometheus exporter),
calls blue/green at a steady rate, and prints one JSON line per half second:
``{"t", "calls", "green", "failed", "phase", "weight", "role", "problem",
"judged_green_calls"}`` (``green``: calls answered by green's model in that half second;
``judged_green_calls``: green calls in the evidence of this replica's last decision, when it
leads).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

import openai
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server

import openai_bluegreen


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--blue", required=True)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    start_http_server(args.metrics_port, addr="127.0.0.1")
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    openai_bluegreen.install(args.config, tracer_provider=TracerProvider(),
                             meter_provider=meter_provider)
    client = openai.OpenAI(base_url=args.blue, api_key="blue-key", max_retries=0, timeout=5)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    tally = {"calls": 0, "green": 0, "failed": 0}

    def drive(worker: int) -> None:
        n = 0
        period = 4 / args.rate
        while not stop.is_set():
            began = time.monotonic()
            n += 1
            try:
                answer = client.chat.completions.create(
                    model="gpt-4.1", user=f"{args.name}-{worker}-{n}",
                    messages=[{"role": "user", "content": "hello"}])
                green = answer.model == "green-model"
                failed = False
            except openai.APIError:
                green, failed = False, True
            with lock:
                tally["calls"] += 1
                tally["green"] += green
                tally["failed"] += failed
            time.sleep(max(0.0, period - (time.monotonic() - began)))

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    while not stop.wait(0.5):
        with lock:
            line = dict(tally)
            tally.update(calls=0, green=0, failed=0)
        status = openai_bluegreen.status()
        rollout = status["rollouts"][0]
        watcher = status.get("watcher", {})
        decision = rollout.get("last_decision") or {}
        judged = [c.get("green_calls") for c in decision.get("checks", [])
                  if c.get("green_calls") is not None]
        line.update(t=time.time(), phase=rollout.get("phase"), weight=rollout.get("weight"),
                    role=watcher.get("role"), problem=watcher.get("problem"),
                    judged_green_calls=max(judged) if judged else None)
        print(json.dumps(line), flush=True)
    openai_bluegreen.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
