"""The shipped simulated upstream behaves as configured, over real HTTP on loopback."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from openai_bluegreen.testing import SimulatedUpstream, UpstreamProcess, UpstreamSettings

MSGS = [{"role": "user", "content": "hi"}]
SRC = str(Path(__file__).resolve().parent.parent / "src")


def test_error_rates_by_status_are_honoured() -> None:
    with SimulatedUpstream("u", error_rates={503: 0.2, 429: 0.1}, seed=7) as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        outcomes: collections.Counter[str] = collections.Counter()
        for _ in range(600):
            try:
                client.chat.completions.create(model="m", messages=MSGS)
                outcomes["ok"] += 1
            except openai.APIStatusError as exc:
                outcomes[str(exc.status_code)] += 1
    assert 0.15 <= outcomes["503"] / 600 <= 0.25
    assert 0.06 <= outcomes["429"] / 600 <= 0.14
    assert up.status_counts[503] == outcomes["503"]


def test_error_rates_are_honoured_beside_a_stall_rate_an_error_status_wins() -> None:
    """A request drawn for both an error status and a stall is answered with the status: a
    scenario asking for 50 % 503s gets them however many stalls it also asks for, and the
    stalls take from the other requests."""
    with SimulatedUpstream("u", error_rates={503: 0.5}, stall_rate=1.0, stall_seconds=0.01,
                           seed=7) as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        for _ in range(200):
            with contextlib.suppress(openai.APIStatusError, openai.APIConnectionError):
                client.chat.completions.create(model="m", messages=MSGS)
    assert set(up.status_counts) == {503, 408}
    assert 0.4 <= up.status_counts[503] / 200 <= 0.6


def test_latency_and_time_to_first_chunk() -> None:
    with SimulatedUpstream("u", latency=0.15, ttfc=0.1, chunk_interval=0.01) as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        t0 = time.perf_counter()
        client.chat.completions.create(model="m", messages=MSGS)
        assert time.perf_counter() - t0 >= 0.15
        t0 = time.perf_counter()
        stream = client.chat.completions.create(model="m", messages=MSGS, stream=True)
        next(iter(stream))
        first = time.perf_counter() - t0
        list(stream)
        total = time.perf_counter() - t0
    assert 0.1 <= first < 0.5
    assert total >= first + 0.05


def test_rate_limit_answers_429_with_retry_after() -> None:
    with SimulatedUpstream("u", rate_limit_rps=5) as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        statuses = []
        for _ in range(12):
            try:
                client.chat.completions.create(model="m", messages=MSGS)
                statuses.append(200)
            except openai.RateLimitError as exc:
                statuses.append(429)
                assert exc.response.headers["retry-after"] == "1"
    assert statuses.count(429) >= 5
    assert statuses[0] == 200


def test_mid_stream_disconnect_and_recorded_requests() -> None:
    with SimulatedUpstream("u", disconnect_rate=1.0, disconnect_after_chunks=2) as up, \
            openai.OpenAI(base_url=up.base_url, api_key="secret-k", max_retries=0) as client:
        got = []
        with pytest.raises(Exception):  # noqa: B017 - the transport error class is the SDK's
            for chunk in client.chat.completions.create(model="m", messages=MSGS, stream=True):
                got.append(chunk)
        assert len(got) == 2
        recorded = up.requests[-1]
        assert recorded.path == "/chat/completions"
        assert recorded.model == "m"
        assert recorded.api_key == "secret-k"


def test_streams_report_usage_when_asked_and_fail_in_band() -> None:
    with SimulatedUpstream("u") as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        chunks = list(client.completions.create(model="m", prompt="x", stream=True,
                                                stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
        up.configure(stream_failure_rate=1.0)
        events = list(client.responses.create(model="m", input="x", stream=True))
        assert events[-1].type == "response.failed"
        assert events[-1].response.error is not None
        assert events[-1].response.error.code == "server_error"
        with pytest.raises(openai.APIError, match="simulated server error"):
            list(client.chat.completions.create(model="m", messages=MSGS, stream=True))


def test_settings_are_validated_and_changeable_at_run_time() -> None:
    with pytest.raises(ValueError, match="error_rates"):
        UpstreamSettings(error_rates={503: 1.5})
    with pytest.raises(ValueError, match="loopback"):
        SimulatedUpstream("u", host="0.0.0.0")
    with SimulatedUpstream("u") as up:
        with pytest.raises(TypeError, match="unknown upstream setting"):
            up.configure(colour="green")
        up.configure(output_tokens=3)
        with openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
            out = client.chat.completions.create(model="m", messages=MSGS)
        assert out.usage is not None and out.usage.completion_tokens == 3


def test_cached_and_reasoning_tokens_are_counts_within_the_usage() -> None:
    for value in (-1, 1.5, float("nan"), True, "5", None):
        with pytest.raises(ValueError, match=r"cached_tokens must be a whole number >= 0"):
            UpstreamSettings(cached_tokens=value)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"reasoning_tokens must be a whole number >= 0"):
            UpstreamSettings(reasoning_tokens=value)  # type: ignore[arg-type]
    # Never more than the prompt or the completion holds, as a provider reports them.
    with SimulatedUpstream("u", input_tokens=10, cached_tokens=50, output_tokens=3,
                           reasoning_tokens=9) as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        chat = client.chat.completions.create(model="m", messages=MSGS).usage
        answer = client.responses.create(model="m", input="hi").usage
    assert chat is not None and chat.prompt_tokens_details is not None
    assert chat.completion_tokens_details is not None
    assert (chat.prompt_tokens_details.cached_tokens,
            chat.completion_tokens_details.reasoning_tokens) == (10, 3)
    assert answer is not None
    assert (answer.input_tokens_details.cached_tokens,
            answer.output_tokens_details.reasoning_tokens) == (10, 3)


def test_the_command_line_refuses_bad_values_by_name() -> None:
    import socket
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "openai_bluegreen.testing", *args],
                              capture_output=True, text=True, timeout=30, check=False)

    done = run("--error-rate", "foo")
    assert done.returncode == 2 and "--error-rate: must be STATUS=P" in done.stderr
    assert "'foo'" in done.stderr
    done = run("--latency", "nan")  # used to be accepted, and then to answer at once
    assert done.returncode == 2 and "latency must be a finite number >= 0" in done.stderr
    with pytest.raises(ValueError, match="ttfc must be a finite number"):
        UpstreamSettings(ttfc=float("inf"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("--port", str(port))
    assert done.returncode == 1 and f"cannot serve on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def _status(client: openai.OpenAI) -> int:
    try:
        client.chat.completions.create(model="m", messages=MSGS)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_an_upstream_process_serves_and_is_steered_from_here() -> None:
    """UpstreamProcess runs the server in a child (the demo's upstreams: their latency must not
    depend on the app's process getting the GIL) and changes its behaviour on request."""
    up = UpstreamProcess("child", error_rates={503: 1.0}, output_tokens=3)
    with pytest.raises(RuntimeError, match="'child' is not started"):
        up.base_url  # noqa: B018 - the property raises
    with up, openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        assert [_status(client) for _ in range(3)] == [503, 503, 503]
        up.configure(error_rates={})
        answer = client.chat.completions.with_raw_response.create(model="m", messages=MSGS)
        assert answer.headers["x-upstream"] == "child"
        assert answer.parse().usage.completion_tokens == 3  # type: ignore[union-attr]
        # A bad value is refused by name, by the child's own validation, and changes nothing.
        with pytest.raises(ValueError, match=r"error_rates\[503\] must be between 0 and 1"):
            up.configure(error_rates={503: 2.0})
        with pytest.raises(TypeError, match=r"unknown upstream setting.*: nope"):
            up.configure(nope=1)
        assert _status(client) == 200
        pid, url = up._proc.pid, up.base_url  # type: ignore[union-attr]
    assert up._proc is None and not _running(pid)
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client, \
            pytest.raises(openai.APIConnectionError):  # its port is closed
        client.chat.completions.create(model="m", messages=MSGS)


def test_an_upstream_process_refuses_bad_settings_before_starting_and_reports_its_death(
        ) -> None:
    with pytest.raises(ValueError, match="latency must be a finite number >= 0"):
        UpstreamProcess("bad", latency=-1.0)
    with pytest.raises(ValueError, match="loopback addresses only"):
        UpstreamProcess("bad", host="0.0.0.0")
    with UpstreamProcess("dies") as up:
        up._proc.kill()  # type: ignore[union-attr]
        up._proc.wait(5)  # type: ignore[union-attr]
        with pytest.raises(RuntimeError, match=r"'dies' (has stopped|exited)"):
            up.configure(latency=0.1)


def test_an_upstream_process_stops_when_its_parent_goes() -> None:
    """The child reads its commands from a pipe: when the process that started it dies
    without stopping it, the pipe closes and the child exits (no orphan keeps the port)."""
    code = ("from openai_bluegreen.testing import UpstreamProcess\n"
            "up = UpstreamProcess('orphan').start()\n"
            "print(up._proc.pid, flush=True)\n"
            "import os; os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _running(pid):
        assert time.monotonic() < deadline, f"the upstream child {pid} outlived its parent"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return not stat.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return False


def _client(up: SimulatedUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0)


def test_a_rate_limit_below_one_request_per_second_still_admits_requests() -> None:
    # rate_limit_rps=0.5 means one request every 2 s. The bucket's capacity is the rate
    # (0.5 tokens), so it never holds the 1 token a request takes: every request is a 429.
    with SimulatedUpstream("x", rate_limit_rps=0.5) as up, _client(up) as client:
        admitted = 0
        for _ in range(2):
            try:
                client.chat.completions.create(model="m", messages=MSGS)
                admitted += 1
            except openai.RateLimitError:
                pass
            time.sleep(2.2)
        assert admitted == 2


def test_disconnect_rate_one_cuts_every_stream_even_one_shorter_than_the_cut_point() -> None:
    # 8 tokens -> 8 content chunks + the finish chunk + [DONE] = 10 events; a cut "after 10
    # chunks" is never reached, so with disconnect_rate=1.0 the stream completes normally.
    with SimulatedUpstream("x", output_tokens=8, disconnect_rate=1.0,
                           disconnect_after_chunks=10) as up, _client(up) as client:
        stream = client.chat.completions.create(model="m", messages=MSGS, stream=True)
        with pytest.raises(openai.APIConnectionError):
            for _chunk in stream:
                pass


def test_error_bodies_have_every_field_openai_sends() -> None:
    # OpenAI's Error schema requires type, message, param and code; a rate-limit 429 carries
    # code "rate_limit_exceeded" (what apps test to tell it from "insufficient_quota").
    with SimulatedUpstream("x", error_rates={429: 1.0}) as up, _client(up) as client, \
            pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=MSGS)
    body = caught.value.body
    assert isinstance(body, dict)
    assert {"type", "message", "param", "code"} <= set(body), body
    assert caught.value.code == "rate_limit_exceeded", body


def test_embeddings_honour_the_requested_dimensions() -> None:
    # OpenAI returns vectors of the length asked for with `dimensions` (text-embedding-3-*).
    with SimulatedUpstream("x") as up, _client(up) as client:
        result = client.embeddings.create(model="text-embedding-3-small", input="hi",
                                               dimensions=4, encoding_format="float")
    assert len(result.data[0].embedding) == 4


_CTRL_C_APP = r"""
import signal, time, openai
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
from openai_bluegreen.testing import UpstreamProcess
with UpstreamProcess("blue") as up:
    client = openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0)
    print("ready", flush=True)
    try:
        time.sleep(30)
    except KeyboardInterrupt:  # the app (like the demo) handles Ctrl-C and carries on
        pass
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    print("served after Ctrl-C", flush=True)
"""


def test_ctrl_c_in_the_terminal_does_not_kill_an_upstream_process() -> None:
    # A terminal's Ctrl-C goes to the whole foreground process group, children included. The
    # child is meant to stop when its parent closes its stdin; instead it dies of
    # KeyboardInterrupt, so the parent's calls after Ctrl-C fail (the demo's "Ctrl-C stops
    # early and still writes the report" then reports errors its upstreams never made).
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_APP], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "served after Ctrl-C" in out, err[-2000:]
    assert "KeyboardInterrupt" not in err, err[-2000:]


def test_retry_after_is_long_enough_for_a_retry_to_be_admitted() -> None:
    # At 0.25 requests/s the next request is admitted 4 s after the last; Retry-After always
    # says 1, so a client that waits as told (the SDK does) is refused again and again.
    with SimulatedUpstream("x", rate_limit_rps=0.25) as up, _client(up) as client:
        with contextlib.suppress(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=MSGS)  # takes the burst
        for _attempt in range(3):
            try:
                client.chat.completions.create(model="m", messages=MSGS)
                return
            except openai.RateLimitError as exc:
                time.sleep(float(exc.response.headers["retry-after"]))
        pytest.fail("three waits of Retry-After seconds each and still refused")


@pytest.mark.parametrize("surface", ["chat", "responses"])
def test_a_stream_is_cut_or_fails_in_band_each_at_the_rate_asked_for(surface: str) -> None:
    # Both were drawn independently and a cut stream never reached its in-band failure: at
    # 0.5 each, a quarter of the streams completed and only a quarter failed in band.
    with SimulatedUpstream("x", disconnect_rate=0.5, stream_failure_rate=0.5, seed=3) as up, \
            _client(up) as client:
        outcomes: collections.Counter[str] = collections.Counter()
        for _ in range(200):
            try:
                if surface == "chat":
                    list(client.chat.completions.create(model="m", messages=MSGS, stream=True))
                    outcomes["completed"] += 1
                else:
                    events = list(client.responses.create(model="m", input="x", stream=True))
                    outcomes[events[-1].type] += 1
            except openai.APIConnectionError:
                outcomes["cut"] += 1
            except openai.APIError:  # a chat stream's in-band error event
                outcomes["response.failed"] += 1
    assert set(outcomes) == {"cut", "response.failed"}, outcomes
    assert 0.4 <= outcomes["cut"] / 200 <= 0.6, outcomes
    with pytest.raises(ValueError, match=r"disconnect_rate \+ stream_failure_rate must add up "
                                         r"to at most 1 .*got 0\.6 \+ 0\.5"):
        UpstreamSettings(disconnect_rate=0.6, stream_failure_rate=0.5)
    UpstreamSettings(disconnect_rate=0.7, stream_failure_rate=0.3)  # 1, within rounding


@pytest.mark.parametrize(("changes", "message"), [
    ({"error_rates": {503: "0.1"}}, "error_rates[503] must be between 0 and 1 (got '0.1')"),
    ({"error_rates": [(503, 0.1)]}, "error_rates must be a mapping of HTTP status"),
    ({"error_rates": {503: 0.8, 500: 0.3}}, "error_rates must add up to at most 1 (got 1.1)"),
    ({"latency": "0.1"}, "latency must be a finite number >= 0 (got '0.1')"),
    ({"stall_rate": "0.5"}, "stall_rate must be between 0 and 1 (got '0.5')"),
    ({"rate_limit_rps": float("nan")}, "rate_limit_rps must be a number > 0 or None (got nan)"),
    ({"rate_limit_rps": "5"}, "rate_limit_rps must be a number > 0 or None (got '5')"),
    ({"output_tokens": 1.5}, "output_tokens must be a whole number >= 1 (got 1.5)"),
    ({"max_stream_chunks": 0}, "max_stream_chunks must be a whole number >= 1 (got 0)"),
    ({"disconnect_after_chunks": -1},
     "disconnect_after_chunks must be a whole number >= 0 (got -1)"),
    ({"input_tokens": -5}, "input_tokens must be a whole number >= 0 (got -5)"),
])
def test_bad_settings_are_refused_naming_the_field_and_value(
        changes: dict[str, object], message: str) -> None:
    # They raised a bare TypeError ('<=' not supported ...), an AttributeError, or were taken
    # and broke requests later (a NaN rate limit, 1.5 output tokens, -1 chunks before a cut).
    with pytest.raises(ValueError) as caught:
        UpstreamSettings(**changes)  # type: ignore[arg-type]
    assert message in str(caught.value)
    with SimulatedUpstream("x") as up, pytest.raises(ValueError) as caught:
        up.configure(**changes)
    assert message in str(caught.value)
    assert up.settings == UpstreamSettings()  # nothing changed


def test_error_rates_that_add_up_to_one_are_taken_whatever_the_float_sum() -> None:
    # 0.34 + 0.56 + 0.1 is 1.0000000000000002 in floats: refused as "more than 1".
    with SimulatedUpstream("x", error_rates={500: 0.34, 502: 0.56, 503: 0.1}) as up, \
            _client(up) as client:
        assert _status(client) in (500, 502, 503)


def test_stopping_with_calls_in_flight_ends_them_quietly_and_leaves_no_thread(
        caplog: pytest.LogCaptureFixture) -> None:
    # On Python 3.11 each connection handler still waiting (a stall, a latency, a stream
    # between chunks) was cancelled by the loop's teardown, and asyncio logged
    # "Exception in callback ... CancelledError" with a traceback for each.
    import threading

    up = SimulatedUpstream("x", stall_rate=1.0, stall_seconds=60).start()
    client = openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0, timeout=60)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.chat.completions.create(model="m", messages=MSGS)
        except BaseException as exc:  # recorded for the assertion
            errors.append(exc)

    callers = [threading.Thread(target=call) for _ in range(3)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 10
    while len(up.requests) < 3:
        assert time.monotonic() < deadline, "the calls never reached the upstream"
        time.sleep(0.01)
    with caplog.at_level("DEBUG", logger="asyncio"):
        up.stop()
    for caller in callers:
        caller.join(10)
    client.close()
    assert len(errors) == 3 and all(isinstance(e, openai.APIConnectionError) for e in errors)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], \
        caplog.text[-2000:]
    assert "upstream-x" not in {t.name for t in threading.enumerate()}


def test_a_start_that_failed_can_be_retried() -> None:
    # The failed start left its dead thread behind: a second start() returned at once, serving
    # nothing (and reported no error), and stop() warned of a coroutine never awaited.
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = SimulatedUpstream("x", port=port)
        with pytest.raises(OSError):
            up.start()
        with pytest.raises(OSError):
            up.start()
    with up, _client(up) as client:
        assert _status(client) == 200


def test_a_stream_longer_than_max_stream_chunks_sends_the_whole_answer() -> None:
    # The streamed text was cut to max_stream_chunks tokens (10 words of 100) while its usage
    # still said 100, and it differed from the same answer not streamed.
    with SimulatedUpstream("x", output_tokens=100, max_stream_chunks=10) as up, \
            _client(up) as client:
        whole = client.chat.completions.create(model="m", messages=MSGS).choices[0].message
        chunks = list(client.chat.completions.create(model="m", messages=MSGS, stream=True))
        events = list(client.responses.create(model="m", input="x", stream=True))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 10
    assert "".join(texts) == whole.content
    assert whole.content is not None and len(whole.content.split()) == 100
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 10
    assert "".join(deltas) == whole.content
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == whole.content


def test_an_upstream_process_takes_a_settings_object_and_refuses_unknown_names_at_once(
        ) -> None:
    # settings=UpstreamSettings(...), as SimulatedUpstream takes it, failed at start() with
    # "Object of type UpstreamSettings is not JSON serializable"; record_limit (not a setting)
    # passed the constructor's check and was refused only by the started child.
    with pytest.raises(TypeError, match=r"unknown upstream setting.*: record_limit"):
        UpstreamProcess("bad", record_limit=5)
    with UpstreamProcess("obj", settings=UpstreamSettings(output_tokens=3, latency=5.0),
                         latency=0.0) as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        answer = client.chat.completions.create(model="m", messages=MSGS)
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_requests_it_has_no_answer_for_get_an_http_error_not_a_dropped_connection(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A ``json_schema`` given as a string, a ``true`` sub-schema or a Content-Length that is
    no number raised inside the server, which closed the connection: the client saw an
    APIConnectionError, as if the upstream were down."""
    import json
    import socket

    with SimulatedUpstream("u") as up, \
            openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        odd = client.chat.completions.create(
            model="m", messages=MSGS,
            response_format={"type": "json_schema", "json_schema": "oops"})  # type: ignore[typeddict-item]
        assert odd.choices[0].message.content
        loose = client.chat.completions.create(model="m", messages=MSGS, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"anything": True}}}})
        assert json.loads(loose.choices[0].message.content or "") == {"anything": None}
        with socket.create_connection((up.host, up.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\n"
                         b"content-length: ten\r\n\r\n")
            assert sock.recv(200).startswith(b"HTTP/1.1 400 ")
        # Whatever else fails inside the server is its 500, before or in place of a stream.
        def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("no answer for that")

        monkeypatch.setattr(up, "_complete", broken)
        monkeypatch.setattr(up, "_events", broken)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError, match="no answer for that"):
                client.chat.completions.create(model="m", messages=MSGS, stream=stream)
        assert any("failed" in r.getMessage() for r in caplog.records)
        # Such a 500 is a whole answer: the connection goes on (a client pools it; closed, its
        # next request went into the closed connection, a connection error under load).
        with socket.create_connection((up.host, up.port), timeout=5) as sock:
            body = json.dumps({"model": "m", "messages": MSGS}).encode()
            request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                       b"content-length: %d\r\n\r\n%s" % (len(body), body))
            for _ in range(2):
                sock.sendall(request)
                answer = sock.recv(4096)
                assert answer.startswith(b"HTTP/1.1 500 "), answer
                assert b"connection: close" not in answer.lower()
        # Every answered refusal is counted, as it is recorded.
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="m", input="hi", previous_response_id="resp_nope")
        assert up.status_counts[400] == 1 and up.requests[-1].status == 400
