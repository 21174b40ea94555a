"""The router: rollouts indexed by requested model, weights, and per-client lanes.

A *lane* is everything one (caller client, rollout, environment, operation, requested model)
needs on the request path, computed once: the client and resource to call, the rewritten model,
and the frozen attribute sets for spans and metrics. The hot path only does dict look-ups.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import metrics, trace

from . import _telemetry as T
from ._assignment import (
    BUCKETS,
    Environment,
    bucket,
    current_force,
    current_key,
    random_bucket,
    salt_for,
)
from ._config import Config, EnvironmentTarget, Rollout, missing_keys
from ._errors import ConfigError, UnknownRolloutError

__all__ = ["Lane", "RolloutRuntime", "Router", "TargetRuntime"]

# Host suffix -> gen_ai.provider.name (semconv values), first match wins: more specific first.
_PROVIDER_BY_HOST = (
    ("openai.azure.com", "azure.ai.openai"),
    ("cognitiveservices.azure.com", "azure.ai.openai"),
    ("api.openai.com", "openai"),
    ("deepseek.com", "deepseek"),
    ("mistral.ai", "mistral_ai"),
    ("groq.com", "groq"),
    ("x.ai", "x_ai"),
    ("perplexity.ai", "perplexity"),
    ("anthropic.com", "anthropic"),
    ("cohere.ai", "cohere"),
    ("cohere.com", "cohere"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    # Azure AI model inference: serverless endpoints ({name}.{region}.models.ai.azure.com) and
    # the shared one; a Foundry resource (services.ai.azure.com) is decided by its path below.
    ("models.ai.azure.com", "azure.ai.inference"),
    ("models.inference.ai.azure.com", "azure.ai.inference"),
    ("ml.cloud.ibm.com", "ibm.watsonx.ai"),  # watsonx.ai's OpenAI-compatible model gateway
)


def infer_provider(host: str | None, client: Any) -> str:
    """A ``gen_ai.provider.name`` (a semconv well-known value) for the host a call goes to
    (``client`` is the client that sends it); for an unknown host, ``azure.ai.openai`` on an
    Azure client and ``openai`` otherwise (OpenAI-compatible API)."""
    if host:
        for suffix, name in _PROVIDER_BY_HOST:
            # "-" for regional hosts: us-central1-aiplatform.googleapis.com
            if host == suffix or host.endswith(("." + suffix, "-" + suffix)):
                return name
        # bedrock-runtime.{region}.amazonaws.com/openai/v1, and the Mantle endpoint AWS also
        # documents for the OpenAI SDK, bedrock-mantle.{region}.api.aws/v1
        if host.startswith("bedrock") and host.endswith((".amazonaws.com", ".api.aws")):
            return "aws.bedrock"
        if host.endswith(".services.ai.azure.com"):
            # An Azure AI Foundry resource serves Azure OpenAI under /openai (its v1 API:
            # /openai/v1/) and Azure AI model inference under /models.
            path = urlsplit(str(getattr(client, "base_url", ""))).path
            return "azure.ai.openai" if "/openai" in path else "azure.ai.inference"
    if type(client).__name__.startswith(("AzureOpenAI", "AsyncAzureOpenAI")):
        return "azure.ai.openai"
    return "openai"


class TargetRuntime:
    """An environment's target with its API key resolved from the environment variable."""

    __slots__ = ("api_key", "base_url", "headers", "model", "params", "provider")

    def __init__(self, target: EnvironmentTarget, api_key: str | None) -> None:
        self.model = target.model
        self.base_url = target.base_url
        self.api_key = api_key
        self.headers = dict(target.headers)
        self.params = dict(target.params)
        self.provider = target.provider

    def __repr__(self) -> str:  # never show the key
        return f"TargetRuntime(model={self.model!r}, base_url={self.base_url!r})"


class RolloutRuntime:
    """A rollout as the hot path sees it. ``weight_bp`` is replaced atomically by set_weight."""

    __slots__ = ("blue", "conversation_env", "fallback_enabled", "fallback_on", "green",
                 "green_max_retries", "name", "response_models", "responses", "salt", "sticky",
                 "weight_bp")

    def __init__(self, rollout: Rollout, blue: TargetRuntime, green: TargetRuntime) -> None:
        self.name = rollout.name
        # gen_ai.response.model values on the metrics, per (environment, operation), across
        # every client: the series budget (see Lane.response_attrs).
        self.response_models: dict[tuple[str, str], set[str]] = {}
        self.salt = salt_for(rollout.name)
        self.weight_bp = round(rollout.weight * 100)
        self.sticky = tuple(rollout.sticky)
        self.blue = blue
        self.green = green
        self.fallback_enabled = rollout.fallback.enabled
        self.fallback_on = frozenset(rollout.fallback.on)
        self.green_max_retries = rollout.fallback.green_max_retries
        # Responses API state lives at the provider that made it. The responses this process
        # saw answered, by environment, so a follow-up (previous_response_id) goes where its
        # predecessor is; bounded, oldest forgotten first.
        self.responses: dict[str, Environment] = {}
        # A stored conversation (conversation=...) was made through the caller's own client:
        # when exactly one environment keeps the caller's endpoint, that is where it lives.
        self.conversation_env: Environment | None = (
            "blue" if green.base_url is not None and blue.base_url is None
            else "green" if blue.base_url is not None and green.base_url is None else None)

    def remember_response(self, response_id: str, env: Environment) -> None:
        """A Responses API response answered by ``env``: its follow-ups go there too."""
        responses = self.responses
        responses[response_id] = env
        while len(responses) > MAX_REMEMBERED_RESPONSES:
            try:
                del responses[next(iter(responses))]
            except KeyError:
                continue  # another thread evicted that one: look again
            except (RuntimeError, StopIteration):
                break  # changed under us: the next insert evicts what is left over

    def pinned(self, kwargs: dict[str, Any]) -> Environment | None:
        """The environment a call must go to because its Responses API state lives there (see
        ``remember_response``, ``conversation_env``); ``None`` when it is free to choose. A
        pinned call never falls back: the other environment cannot serve it."""
        previous = kwargs.get("previous_response_id")
        if previous.__class__ is str:
            pinned = self.responses.get(previous)
            if pinned is not None:
                return pinned
        # A conversation id, or {"id": ...}; the stream() helpers pass the SDK's sentinel.
        if (self.conversation_env is not None
                and isinstance(kwargs.get("conversation"), (str, dict))):
            return self.conversation_env
        return None

    def choose(self, kwargs: dict[str, Any]) -> Environment:
        """blue or green for a call that is not pinned: force, else sticky key hash, else a
        random draw."""
        forced = current_force()
        if forced is not None:
            return forced
        weight = self.weight_bp
        if weight <= 0:
            return "blue"
        if weight >= BUCKETS:
            return "green"
        key: str | None = None
        for source in self.sticky:
            value = current_key() if source == "assignment_key" else kwargs.get(source)
            if value.__class__ is str and value:
                key = value
                break
        draw = bucket(self.salt, key) if key is not None else random_bucket()
        return "green" if draw < weight else "blue"


# gen_ai.provider.name values whose spans carry the openai.* attributes (see Lane).
_OPENAI_API_PROVIDERS = frozenset({"openai", "azure.ai.openai"})
MAX_REMEMBERED_RESPONSES = 100_000  # per rollout: ~10 MB of ids at most
_MAX_SHARED_REQUEST_ATTRS = 256  # per lane; beyond, each call gets its own dict
_MAX_RESPONSE_MODELS = 32  # gen_ai.response.model values per rollout, environment, operation


def _has_authorization(headers: dict[str, Any]) -> bool:
    return any(name.lower() == "authorization" for name in headers)


def _attribute_value(name: str, value: Any) -> Any:
    """A request parameter as an attribute value, or ``None`` to leave it out (absent, an SDK
    sentinel, or a value an attribute cannot hold)."""
    if value is None or isinstance(value, (dict, set)) or type(value).__name__ in (
            "NotGiven", "Omit"):
        return None
    if name in ("stop", "encoding_format"):
        items = (value,) if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(items)
        return None
    if name == "n":
        return value if isinstance(value, int) and value != 1 else None  # 1 is the default
    if name == "service_tier":  # as the semconv says: not when it is "auto"
        return value if isinstance(value, str) and value != "auto" else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if name in _DOUBLE_PARAMS else value


def output_type(kwargs: dict[str, Any]) -> str | None:
    """``gen_ai.output.type`` when the request asks for an output format (semconv:
    conditionally required then): ``json`` for a JSON schema or JSON mode, or a pydantic model
    given to ``parse()``; ``text`` for an explicit text format."""
    if "response_format" not in kwargs and "text" not in kwargs and "text_format" not in kwargs:
        return None  # most calls: three lookups, nothing more
    fmt = kwargs.get("response_format")
    if fmt is None:  # Responses API: text.format, or parse()'s text_format
        text = kwargs.get("text")
        fmt = text.get("format") if isinstance(text, dict) else kwargs.get("text_format")
    if fmt is None:
        return None
    if isinstance(fmt, type):
        return "json"  # a model for parse(): structured output
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("json_schema", "json_object"):
        return "json"
    return "text" if kind == "text" else None


# Request parameters the semantic conventions type as double (``temperature=0`` is 0.0).
_DOUBLE_PARAMS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})


def _host_port(base_url: Any) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(str(base_url))
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None, None
    return parts.hostname, port


class Lane:
    """Precomputed routing and telemetry for one (client, rollout, environment, operation)."""

    __slots__ = ("_models_seen", "_omit", "_request_attrs", "_response_attrs", "_sent_headers",
                 "caller_retries", "caller_timeout", "client", "env", "error_attrs", "headers",
                 "metric_attrs", "model", "omit_auth", "openai_attrs", "params", "resources",
                 "rollout", "router", "span_attrs", "span_name", "token_attrs")

    def __init__(self, router: Router, rollout: RolloutRuntime, env: Environment,
                 operation: str, requested_model: str, caller_client: Any,
                 own_client: Any | None) -> None:
        target = rollout.green if env == "green" else rollout.blue
        self.router = router  # whose instruments and tracer record the lane's calls
        self.rollout = rollout
        self.env = env
        self.model = target.model
        self.params = target.params
        self.headers: dict[str, Any] = target.headers
        # Another endpoint with no key configured sends no key of the caller's (see
        # Router._own_client): unless its headers or the call's carry their own Authorization,
        # the SDK's is omitted, per call, where the SDK's check for a missing key looks.
        self.omit_auth = (target.base_url is not None and target.api_key is None
                          and not _has_authorization(target.headers))
        self.client = own_client
        # The caller's settings its own client took (see Router.lane): the SDK reads them per
        # request and lets an app change them on its client (openai.timeout = ... does it to
        # the module client).
        self.caller_timeout = getattr(caller_client, "timeout", None)
        self.caller_retries = getattr(caller_client, "max_retries", None)
        # The headers a call without extra_headers sends (the environment's, and the omitted
        # Authorization of a keyless endpoint), built once.
        import openai

        self._omit = openai.Omit()
        self._sent_headers = ({**target.headers, "Authorization": self._omit}
                              if self.omit_auth else target.headers)
        self.resources: dict[type, Any] = {}
        effective = own_client if own_client is not None else caller_client
        host, port = _host_port(getattr(effective, "base_url", ""))
        provider = target.provider or infer_provider(host, effective)
        # openai.* attributes are the OpenAI flavor's (semconv: gen_ai.provider.name is the
        # discriminator; another provider's spans "are not expected to include openai.*
        # attributes"): on OpenAI's API, OpenAI's or Azure OpenAI's, not on DeepSeek's.
        self.openai_attrs = provider in _OPENAI_API_PROVIDERS
        metric_attrs: dict[str, Any] = {
            T.OPERATION: operation,
            T.PROVIDER: provider,
            T.REQUEST_MODEL: target.model,
            T.ROLLOUT: rollout.name,
            T.ENVIRONMENT: env,
        }
        if host:
            metric_attrs[T.SERVER_ADDRESS] = host
        if port:
            metric_attrs[T.SERVER_PORT] = port
        self.metric_attrs = metric_attrs
        self.span_name = f"{operation} {target.model}"
        # Every span of this lane carries these (the call adds its response's attributes).
        self.span_attrs = {
            key: metric_attrs[key]
            for key in (T.OPERATION, T.PROVIDER, T.REQUEST_MODEL, T.SERVER_ADDRESS, T.SERVER_PORT)
            if key in metric_attrs
        }
        self.span_attrs |= {
            T.ROLLOUT: rollout.name,
            T.ENVIRONMENT: env,
            T.REQUESTED_MODEL: requested_model,
            T.FLAG_KEY: rollout.name,
            T.FLAG_VARIANT: env,
            T.FLAG_PROVIDER: "openai-bluegreen",
        }
        self.token_attrs = (
            {**metric_attrs, T.TOKEN_TYPE: "input"},
            {**metric_attrs, T.TOKEN_TYPE: "output"},
        )
        self.error_attrs: dict[str, dict[str, Any]] = {}
        self._request_attrs: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._response_attrs: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
        self._models_seen = rollout.response_models.setdefault((env, operation), set())

    def response_attrs(self, response_model: str | None
                       ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The metric attributes of a call answered by ``response_model`` (the semconv's
        recommended ``gen_ai.response.model``): duration (and time to first chunk), input
        tokens, output tokens. One shared triple per model a provider answers with (a few);
        past 32 of them per rollout, environment and operation (across clients), or with no
        model, the lane's own sets, without it."""
        if response_model is None:
            return self.metric_attrs, self.token_attrs[0], self.token_attrs[1]
        attrs = self._response_attrs.get(response_model)
        if attrs is None:
            seen = self._models_seen  # shared by every client's lane of this env and operation
            if response_model not in seen:
                if len(seen) >= _MAX_RESPONSE_MODELS:
                    return self.metric_attrs, self.token_attrs[0], self.token_attrs[1]
                seen.add(response_model)
            base = {**self.metric_attrs, T.RESPONSE_MODEL: response_model}
            attrs = self._response_attrs.setdefault(response_model, (
                base, {**base, T.TOKEN_TYPE: "input"}, {**base, T.TOKEN_TYPE: "output"}))
        return attrs

    def request_attrs(self, kwargs: dict[str, Any], api_type: str | None) -> dict[str, Any]:
        """The span attributes of a call on this lane: ``span_attrs`` plus the request's
        parameters as sent. One shared dict per distinct set of parameters (apps use a few),
        so what waits in the worker's queue is an object that exists anyway."""
        get = kwargs.get
        stop = get("stop")
        key = (api_type, get("stream"), get("temperature"), get("top_p"), get("max_tokens"),
               get("max_completion_tokens"), get("max_output_tokens"),
               get("frequency_penalty"), get("presence_penalty"), get("seed"),
               tuple(stop) if stop.__class__ is list else stop, get("n"),
               get("encoding_format"), get("service_tier"), get("dimensions"),
               output_type(kwargs))
        try:
            attrs = self._request_attrs.get(key)
        except TypeError:  # an unhashable value: not shared
            return self._build_request_attrs(kwargs, api_type)
        if attrs is None:
            attrs = self._build_request_attrs(kwargs, api_type)
            if len(self._request_attrs) < _MAX_SHARED_REQUEST_ATTRS:
                attrs = self._request_attrs.setdefault(key, attrs)
        return attrs

    def _build_request_attrs(self, kwargs: dict[str, Any], api_type: str | None
                             ) -> dict[str, Any]:
        attrs = dict(self.span_attrs)
        openai_attrs = self.openai_attrs
        if api_type is not None and openai_attrs:
            attrs[T.API_TYPE] = api_type
        if kwargs.get("stream") is True:
            attrs[T.REQUEST_STREAM] = True
        output = output_type(kwargs)
        if output is not None:
            attrs[T.OUTPUT_TYPE] = output
        # The caller's values, then the environment's params over them (what the provider
        # is told last wins, also across spellings of the token limit).
        for source in (kwargs, self.params):
            for name, attribute in T.REQUEST_PARAMS:
                value = _attribute_value(name, source.get(name))
                if value is not None and (openai_attrs or not attribute.startswith("openai.")):
                    attrs[attribute] = value
        return attrs

    def attrs_for_error(self, error_type: str) -> dict[str, Any]:
        attrs = self.error_attrs.get(error_type)
        if attrs is None:
            attrs = {**self.metric_attrs, T.ERROR_TYPE: error_type}
            self.error_attrs[error_type] = attrs
        return attrs

    def rewrite(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's keyword arguments for this environment (the caller's dict is not changed)."""
        out = dict(kwargs)
        out["model"] = self.model
        if self.params:
            body = out.get("extra_body")
            out["extra_body"] = {**body, **self.params} if isinstance(body, dict) else self.params
        if self.headers or self.omit_auth:
            headers = out.get("extra_headers")
            if not isinstance(headers, dict):  # the usual case: built once, in __init__
                out["extra_headers"] = self._sent_headers
                return out
            merged = {**headers, **self.headers}
            if self.omit_auth and not _has_authorization(merged):
                merged["Authorization"] = self._omit
            out["extra_headers"] = merged
        return out

    def resource_for(self, instance: Any) -> Any:
        """The SDK resource to call: the caller's, or the same resource on this lane's client."""
        if self.client is None:
            return instance
        cls = type(instance)
        resource = self.resources.get(cls)
        if resource is None:
            resource = cls(self.client)
            self.resources[cls] = resource
        return resource


def environment_of(config: Config) -> tuple[Any, ...]:
    """What a router built for ``config`` takes from the environment now: the API keys its
    ``api_key_env`` name, and where message content goes."""
    return (tuple(None if t.api_key_env is None else os.environ.get(t.api_key_env)
                  for r in config.rollouts for t in (r.blue, r.green)), T.capture_modes())


class Router:
    """Routes matched calls. One per ``install()``; replaced whole on re-install."""

    def __init__(self, config: Config, *, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None,
                 logger_provider: Any = None) -> None:
        problems = missing_keys(config.rollouts)  # install() named them already: a race
        if problems:
            raise ConfigError(problems)
        rollouts: list[RolloutRuntime] = []
        for rollout in config.rollouts:
            targets = []
            for env in ("blue", "green"):
                target: EnvironmentTarget = getattr(rollout, env)
                key = None if target.api_key_env is None else os.environ.get(target.api_key_env)
                targets.append(TargetRuntime(target, key))
            rollouts.append(RolloutRuntime(rollout, targets[0], targets[1]))
        # What this router took from the environment: a re-install of the same config after
        # it changed (a rotated key, another capture mode) must build a new router.
        self.environment = environment_of(config)
        self.config = config
        self.providers: tuple[Any, ...] = (tracer_provider, meter_provider, logger_provider)
        self.rollouts: dict[str, RolloutRuntime] = {r.name: r for r in rollouts}
        self.by_model: dict[str, RolloutRuntime] = {
            model: runtime
            for runtime, rollout in zip(rollouts, config.rollouts, strict=True)
            for model in rollout.match.model
        }
        self.tracer = T.tracer_for(tracer_provider)
        self.instruments = T.instruments_for(meter_provider, self.weights)
        self.capture = T.capture_modes()
        # Messages are serialized on the request path only when some destination wants them.
        self.capture_content = self.capture.span or self.capture.event_content
        self.events = T.logger_for(logger_provider) if self.capture.events else None
        self._lanes: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, str, str], Lane]] = (
            weakref.WeakKeyDictionary()
        )
        # The last client's lanes, checked first (most apps use one client); weak, so the
        # router never keeps a client alive.
        self._last: tuple[weakref.ref[Any], dict[tuple[str, str, str, str], Lane]] | None = None
        self._lock = threading.Lock()

    def reset_lock_after_fork(self) -> None:
        """In a forked child: the lane lock may have been copied held by a thread it lacks."""
        self._lock = threading.Lock()

    def weights(self) -> Iterable[tuple[str, float]]:
        return [(name, r.weight_bp / BUCKETS) for name, r in self.rollouts.items()]

    def set_weight(self, rollout: str, percent: float) -> None:
        self.check_weight(rollout, percent).weight_bp = round(percent * 100)

    def check_weight(self, rollout: str, percent: float) -> RolloutRuntime:
        """The rollout's runtime, if ``percent`` is a weight it can take; raises otherwise."""
        runtime = self.rollouts.get(rollout)
        if runtime is None:
            known = ", ".join(sorted(self.rollouts)) or "none"
            raise UnknownRolloutError(f"unknown rollout {rollout!r} (configured: {known})")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) \
                or not 0 <= percent <= 100:
            raise ValueError(f"weight must be a percentage between 0 and 100 (got {percent!r})")
        return runtime

    def lane(self, instance: Any, rollout: RolloutRuntime, env: Environment, operation: str,
             requested_model: str, pinned: bool = False) -> Lane:
        """The lane of these calls; ``pinned``: a follow-up that must stay with its
        environment's state, which never falls back, so keeps the caller's SDK retries."""
        client = getattr(instance, "_client", None)
        last = self._last
        if last is not None and last[0]() is client and client is not None:
            per_client: dict[tuple[str, str, str, str], Lane] | None = last[1]
        else:
            per_client = self._lanes.get(client) if client is not None else None
            if per_client is not None:
                self._last = (weakref.ref(client), per_client)
        key = (rollout.name, env if not pinned else f"{env}/pinned", operation, requested_model)
        if per_client is not None:
            lane = per_client.get(key)
            if lane is not None and (lane.client is None or _follows(lane, client)):
                return lane
        with self._lock:  # first call per lane only (and after the caller's client changed)
            per_client = self._lanes.setdefault(client, {})
            lane = per_client.get(key)
            if lane is None or (lane.client is not None and not _follows(lane, client)):
                lane = Lane(self, rollout, env, operation, requested_model, client,
                            self._own_client(client, rollout, env, pinned))
                per_client[key] = lane
            return lane

    def _own_client(self, client: Any, rollout: RolloutRuntime, env: Environment,
                    pinned: bool = False) -> Any | None:
        """The client an environment's calls go through; ``None`` to use the caller's.

        With its own ``base_url``, an environment talks to another endpoint, often another
        provider: it gets a plain ``OpenAI`` / ``AsyncOpenAI`` client with the caller's transport
        (connection pool, timeouts, retries, strict response validation) but none of the
        caller's credentials or identity: not its key, organization or project, not its default
        headers or query (a gateway token there must not reach a third party), and not an Azure
        client's deployment URLs. It sends its own key (none when it has no ``api_key_env``)
        and its ``headers``. Without a ``base_url`` it is the caller's client
        (``with_options``), with its own key and, for green with fallback (and not ``pinned``),
        its own retry budget."""
        target = rollout.green if env == "green" else rollout.blue
        retries = client.max_retries
        if env == "green" and rollout.fallback_enabled and not pinned:
            retries = rollout.green_max_retries
        if target.base_url is not None:
            return _endpoint_client(client, target.base_url, target.api_key, retries)
        options: dict[str, Any] = {}
        if target.api_key is not None:
            options["api_key"] = target.api_key
        if retries != client.max_retries:
            options["max_retries"] = retries
        if not options:
            return None
        derived = client.with_options(**options)
        # The SDK's copy does not carry it over (1.x to 3.x): a caller that asked for its
        # answers to be validated gets green's validated too.
        derived._strict_response_validation = client._strict_response_validation
        return derived

    def status(self) -> list[dict[str, Any]]:
        out = []
        for rollout in self.config.rollouts:
            runtime = self.rollouts[rollout.name]
            out.append({
                "name": rollout.name,
                "match": list(rollout.match.model),
                "weight": runtime.weight_bp / 100,
                "blue": {"model": rollout.blue.model, "base_url": rollout.blue.base_url},
                "green": {"model": rollout.green.model, "base_url": rollout.green.base_url},
                "sticky": list(rollout.sticky),
                "fallback": rollout.fallback.enabled,
            })
        return out


def _follows(lane: Lane, client: Any) -> bool:
    """Whether the lane's own client still has the caller's timeout and retries. A lane on
    the caller's client follows whatever the app changes on it; one on a client of its own
    is built again when the app changed either (``client.timeout = 5``), so green does not
    keep a timeout or retry budget the app took back from blue."""
    timeout = client.timeout
    same: bool = ((timeout is lane.caller_timeout or timeout == lane.caller_timeout)
                  and client.max_retries == lane.caller_retries)
    return same


def _endpoint_client(caller: Any, base_url: str, api_key: str | None, max_retries: int) -> Any:
    """A client for another endpoint on the caller's transport, with no credential of the
    caller's (see ``Router._own_client``)."""
    import openai

    cls = openai.AsyncOpenAI if isinstance(caller, openai.AsyncOpenAI) else openai.OpenAI
    # Omit removes a header the SDK would add: OPENAI_ORG_ID / OPENAI_PROJECT_ID from the
    # environment stay with the caller's endpoint.
    removed: dict[str, Any] = {"OpenAI-Organization": openai.Omit(),
                               "OpenAI-Project": openai.Omit()}
    # OPENAI_CUSTOM_HEADERS (read by the SDK's constructor since openai 2) holds headers for the
    # caller's endpoint, maybe a gateway's token or its own Authorization: none of them goes to
    # another provider, and its Authorization must not replace this endpoint's key.
    for line in os.environ.get("OPENAI_CUSTOM_HEADERS", "").split("\n"):
        name, colon, _ = line.partition(":")
        name = name.strip()
        if colon and name:
            removed[name] = openai.Omit() if name.lower() != "authorization" or api_key is None \
                else f"Bearer {api_key}"
    return cls(
        # The SDK insists on a key; without one configured, a placeholder that the lane's
        # per-call "Authorization: Omit" keeps off the wire (Lane.__init__).
        api_key=api_key if api_key is not None else "no-key-configured",
        base_url=base_url,
        timeout=caller.timeout,
        max_retries=max_retries,
        http_client=_transport_of(caller._client),  # the caller's connection pool, shared
        default_headers=removed,  # Omit removes a header; the SDK allows it
        # Another provider's answers are where a schema drifts: validated if the caller's are.
        _strict_response_validation=caller._strict_response_validation,
    )


def _transport_of(http: Any) -> Any:
    """The caller's HTTP client for another endpoint: itself, or, when it carries credentials
    of its own (``auth``, ``params``, ``cookies``, headers beyond the HTTP library's defaults,
    say a gateway's token), a client on the same connection pool (transport and proxy mounts)
    without them: the HTTP library would add them to every request, to another provider too.
    Run when a lane is built, not per call."""
    # The HTTP library's own class (httpx2's or httpx's Client / AsyncClient), under the SDK's
    # subclasses (DefaultHttpxClient) and the app's.
    cls = next((c for c in type(http).__mro__ if c.__name__ in ("Client", "AsyncClient")
                and c.__module__.split(".")[0] in ("httpx", "httpx2")), None)
    if cls is None:
        return http  # not an httpx-style client: nothing we know how to strip
    try:
        own = {name.lower() for name in http.headers} - _default_headers(cls, http)
        if http.auth is None and not own and not len(http.params) and not len(http.cookies):
            return http
        return cls(transport=http._transport,
                   mounts={pattern.pattern: transport
                           for pattern, transport in http._mounts.items()},
                   headers={n: v for n, v in http.headers.items() if n.lower() not in own},
                   timeout=http.timeout, follow_redirects=http.follow_redirects,
                   max_redirects=http.max_redirects, event_hooks=http.event_hooks,
                   trust_env=http.trust_env)
    except Exception:  # an HTTP library of another shape: the caller's, as before
        return http


_DEFAULT_HEADERS: dict[type, frozenset[str]] = {}


def _default_headers(cls: type, http: Any) -> frozenset[str]:
    """The names of the headers a new client of ``cls`` sends (accept, user-agent, ...); the
    client made to read them is on ``http``'s transport (no pool of its own), never closed."""
    names = _DEFAULT_HEADERS.get(cls)
    if names is None:
        made = cls(transport=http._transport, trust_env=False)
        names = _DEFAULT_HEADERS[cls] = frozenset(n.lower() for n in made.headers)
    return names
