"""Wrapper factories and the one place they are installed and removed.

Each wrapper starts with a kill switch: the SDK caches bound methods (``with_raw_response``
keeps ``resource.create`` from the first access), so a wrapper can outlive ``uninstall()``; it
then passes straight through.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import wrapt

from . import _state
from ._call import Call
from ._router import RolloutRuntime, Router
from ._streams import (
    PREFETCH_MAX,
    AsyncDeferredResponse,
    AsyncStreamProxy,
    ClosableDeferredResponse,
    DeferredResponse,
    SyncStreamProxy,
    counts_as_first,
    end_helper_stream,
    fields,
    in_band_failure,
)

__all__ = ["LAZY_SURFACES", "SURFACES", "patch", "unpatch"]

logger = logging.getLogger("openai_bluegreen")

# (module, class, method, gen_ai.operation.name). stream() helpers call create(), so they are
# routed through it; parse() posts on its own, so it is wrapped too.
SURFACES: tuple[tuple[str, str, str, str], ...] = (
    ("openai.resources.chat.completions", "Completions", "create", "chat"),
    ("openai.resources.chat.completions", "Completions", "parse", "chat"),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", "chat"),
    ("openai.resources.chat.completions", "AsyncCompletions", "parse", "chat"),
    ("openai.resources.responses", "Responses", "create", "chat"),
    ("openai.resources.responses", "Responses", "parse", "chat"),
    ("openai.resources.responses", "AsyncResponses", "create", "chat"),
    ("openai.resources.responses", "AsyncResponses", "parse", "chat"),
    ("openai.resources.embeddings", "Embeddings", "create", "embeddings"),
    ("openai.resources.embeddings", "AsyncEmbeddings", "create", "embeddings"),
    ("openai.resources.completions", "Completions", "create", "text_completion"),
    ("openai.resources.completions", "AsyncCompletions", "create", "text_completion"),
)

# Surfaces in modules that cost much to import (openai 3.x's beta.responses pulls in every beta
# type: ~250 ms) and that an app may never use: wrapped when the app imports them, or at
# install() when it did already. beta.responses.create (openai 2.x, 3.x) posts to /responses too.
LAZY_SURFACES: tuple[tuple[str, str, str, str], ...] = (
    ("openai.resources.beta.responses.responses", "Responses", "create", "chat"),
    ("openai.resources.beta.responses.responses", "AsyncResponses", "create", "chat"),
)

# The stream() helpers' streams close the HTTP response past our proxy, and an exception
# leaving their ``with`` block never reaches it: (module, class, method, kind).
HELPER_SURFACES: tuple[tuple[str, str, str, str], ...] = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream", "close", "close"),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream", "close", "aclose"),
    ("openai.lib.streaming.chat._completions", "ChatCompletionStreamManager", "__exit__",
     "exit"),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStreamManager", "__aexit__",
     "aexit"),
    ("openai.lib.streaming.responses._responses", "ResponseStream", "close", "close"),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream", "close", "aclose"),
    ("openai.lib.streaming.responses._responses", "ResponseStreamManager", "__exit__", "exit"),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStreamManager", "__aexit__",
     "aexit"),
    # with_streaming_response's managers: their exit closes the response without the exception.
    ("openai._response", "ResponseContextManager", "__exit__", "exit"),
    ("openai._response", "AsyncResponseContextManager", "__aexit__", "aexit"),
)

# openai.api.type of a surface's module (the Responses API's calls are "chat" operations too).
_API_TYPES = {"openai.resources.chat.completions": "chat_completions",
              "openai.resources.responses": "responses",
              "openai.resources.beta.responses.responses": "responses"}

# (class, method, what was there before, our wrapper) of every method wrapped now.
_patched: list[tuple[type, str, Any, Any]] = []
# Wrappers of ours that another instrumentation wrapped in turn: uninstall() left them in its
# chain (they pass straight through); a new install() finds them there and routes with them
# again instead of wrapping a second time.
_buried: list[tuple[type, str, Any, Any]] = []
_lock = threading.Lock()
# Set while one of our wrappers routes a call: a wrapper of ours met further down the same
# call passes it through instead of routing it a second time. Only an older layer of ours can
# be there (one another instrumentation or a monkeypatch kept in its chain when it wrapped
# ours, and that install() could not find again: see _wrap), so the guard is used only while
# such a layer may exist (_guarded): an app that installs once, or that re-installs over the
# SDK's own methods, pays nothing.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("openai_bluegreen_inside",
                                                               default=False)
# What each method was when we first wrapped it: nothing of ours can be inside it.
_pristine: dict[tuple[type, str], Any] = {}
# Whether an older layer of ours may sit below a current wrapper: one of them wraps something
# other than what its method was when we first wrapped it (another layer put there since, which
# may hold one of ours, even in a closure). Wrappers of ours that uninstall() took off the class
# are below nothing then: only caches (the SDK's ``with_raw_response``, the app's) still call
# them, and such a call is routed once, by that wrapper alone.
_guarded = False
_awaited: set[str] = set()  # LAZY_SURFACES modules with an import hook of ours still waiting


def _sdk_types() -> tuple[Any, Any, Any, tuple[Any, ...]]:
    import openai
    from openai._legacy_response import LegacyAPIResponse
    from openai._response import APIResponse, AsyncAPIResponse

    return openai.Stream, openai.AsyncStream, LegacyAPIResponse, (APIResponse, AsyncAPIResponse)


def _route(router: Router | None, instance: Any, kwargs: dict[str, Any]) -> RolloutRuntime | None:
    if router is None or instance is None:
        return None
    model = kwargs.get("model")
    return router.by_model.get(model) if model.__class__ is str else None


def _start(router: Router, rollout: RolloutRuntime, operation: str, instance: Any,
           kwargs: dict[str, Any], api_type: str | None) -> Call | None:
    try:
        return Call(router, rollout, operation, instance, kwargs, api_type)
    except Exception:  # a routing fault never breaks the caller: fail open to blue
        logger.exception("openai-bluegreen: routing failed; sending this call to blue")
        return None


def _fail_open(rollout: RolloutRuntime, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments when routing failed: blue's model on the caller's own client.

    When blue has its own endpoint or key, blue's model may not exist on the caller's endpoint:
    the call then goes out exactly as the app wrote it.
    """
    blue = rollout.blue
    if blue.base_url is not None or blue.api_key is not None:
        return kwargs
    return {**kwargs, "model": blue.model}


def _quietly(action: Callable[..., Any], *args: Any) -> None:
    try:
        action(*args)
    except Exception:
        logger.debug("openai-bluegreen: telemetry step failed", exc_info=True)


def _failed_in_band(pending: list[Any]) -> BaseException | None:
    """A Responses stream that reported its failure (``response.failed``, ``error``) before
    any chunk of the answer: nothing of it reached the caller yet."""
    return next((f for f in map(in_band_failure, pending) if f is not None), None)


def _bind(call: Call, wrapped: Any, instance: Any, original: Any) -> Any:
    resource = call.lane.resource_for(instance)
    return wrapped if resource is instance else original.__get__(resource, type(resource))


def _parsed_or_fields(raw: Any) -> Any:
    """A raw response's parsed body (cached: the caller's ``parse()`` gets the same object),
    or, when parsing raises (``chat.completions.parse`` with a schema the answer fails, a
    ``LengthFinishReasonError``), its JSON fields: the error is the caller's to meet in their
    own ``parse()``, as without us, and the call is still measured."""
    try:
        return raw.parse()
    except Exception:
        pass
    try:
        return fields(raw.http_response.content)
    except Exception:
        return None


def _finish_plain(call: Call, result: Any, legacy: Any, lazy: tuple[Any, ...],
                  streams: tuple[type, type]) -> Any:
    """Record a non-streamed result (a model object, or a raw-response wrapper)."""
    if isinstance(result, legacy):  # with_raw_response: the body is read, parse() is cached
        if call.stream:  # the body is a stream: measured through the one parse() returns
            return DeferredResponse(result, call, streams)
        _quietly(call.succeeded, _parsed_or_fields(result))
    elif isinstance(result, lazy):  # with_streaming_response: the body is not read yet
        deferred = (AsyncDeferredResponse if isinstance(result, lazy[1])
                    else ClosableDeferredResponse)
        return deferred(result, call, streams)
    else:
        _quietly(call.succeeded, result)
    return result


def _sync_wrapper(operation: str, original: Any, api_type: str | None) -> Callable[..., Any]:
    stream_type, async_stream_type, legacy, lazy = _sdk_types()
    streams = (stream_type, async_stream_type)

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        router = _state.router
        rollout = _route(router, instance, kwargs)
        if rollout is None or router is None:
            return wrapped(*args, **kwargs)
        if not _guarded:  # no older layer of ours can be further down
            return routed(wrapped, instance, args, kwargs, router, rollout)
        if _inside.get():
            return wrapped(*args, **kwargs)
        token = _inside.set(True)
        try:
            return routed(wrapped, instance, args, kwargs, router, rollout)
        finally:
            _inside.reset(token)

    def routed(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any], router: Router,
               rollout: RolloutRuntime) -> Any:
        call = _start(router, rollout, operation, instance, kwargs, api_type)
        if call is None:
            return wrapped(*args, **_fail_open(rollout, kwargs))
        while True:
            try:
                result = _bind(call, wrapped, instance, original)(*args, **call.arguments())
            except BaseException as exc:  # cancelled or interrupted too: recorded, not retried
                if call.should_fall_back(exc):
                    call.switch_to_blue(exc, instance)
                    continue
                _quietly(call.failed, exc)
                raise
            if not isinstance(result, stream_type):
                return _finish_plain(call, result, legacy, lazy, streams)
            if not call.prefetch:
                return SyncStreamProxy(result, call)
            # Green stream with fallback on: pull up to the first chunk now (past a Responses
            # stream's lifecycle events: response.created, ...), so a failure before any of it
            # reached the caller can still be retried on blue.
            pending: list[Any] = []
            error = None
            try:
                while len(pending) < PREFETCH_MAX:
                    pending.append(result.__next__())
                    if counts_as_first(pending[-1]):
                        break
            except StopIteration:
                pass
            except Exception as exc:
                error = exc
            except BaseException as exc:
                _quietly(call.failed, exc)
                raise
            failed = error if error is not None or call.api_type != "responses" \
                else _failed_in_band(pending)  # only Responses streams report in band
            if failed is not None and call.should_fall_back(failed):
                try:
                    _quietly(result.close)
                except BaseException as exc:  # interrupted while closing: the call ends here
                    _quietly(call.failed, exc)
                    raise
                call.switch_to_blue(failed, instance)
                continue
            return SyncStreamProxy(result, call, pending, error)

    return wrapper


def _async_wrapper(operation: str, original: Any, api_type: str | None) -> Callable[..., Any]:
    sync_stream_type, stream_type, legacy, lazy = _sdk_types()
    streams = (sync_stream_type, stream_type)

    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        router = _state.router
        rollout = _route(router, instance, kwargs)
        if rollout is None or router is None:
            return await wrapped(*args, **kwargs)
        if not _guarded:  # no older layer of ours can be further down
            return await routed(wrapped, instance, args, kwargs, router, rollout)
        if _inside.get():
            return await wrapped(*args, **kwargs)
        token = _inside.set(True)
        try:
            return await routed(wrapped, instance, args, kwargs, router, rollout)
        finally:
            _inside.reset(token)

    async def routed(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any],
                     router: Router, rollout: RolloutRuntime) -> Any:
        call = _start(router, rollout, operation, instance, kwargs, api_type)
        if call is None:
            return await wrapped(*args, **_fail_open(rollout, kwargs))
        while True:
            try:
                result = await _bind(call, wrapped, instance, original)(
                    *args, **call.arguments()
                )
            except BaseException as exc:  # cancelled or interrupted too: recorded, not retried
                if call.should_fall_back(exc):
                    call.switch_to_blue(exc, instance)
                    continue
                _quietly(call.failed, exc)
                raise
            if not isinstance(result, stream_type):
                return _finish_plain(call, result, legacy, lazy, streams)
            if not call.prefetch:
                return AsyncStreamProxy(result, call)
            pending: list[Any] = []
            error = None
            try:
                while len(pending) < PREFETCH_MAX:
                    pending.append(await result.__anext__())
                    if counts_as_first(pending[-1]):
                        break
            except StopAsyncIteration:
                pass
            except Exception as exc:
                error = exc
            except BaseException as exc:
                _quietly(call.failed, exc)
                raise
            failed = error if error is not None or call.api_type != "responses" \
                else _failed_in_band(pending)  # only Responses streams report in band
            if failed is not None and call.should_fall_back(failed):
                try:
                    await result.close()
                except Exception:
                    logger.debug("openai-bluegreen: closing failed stream", exc_info=True)
                except BaseException as exc:  # cancelled while closing: the call ends here
                    _quietly(call.failed, exc)
                    raise
                call.switch_to_blue(failed, instance)
                continue
            return AsyncStreamProxy(result, call, pending, error)

    return wrapper


def _helper_wrapper(cls: type, kind: str) -> Callable[..., Any]:
    """End our call when a stream() helper's stream closes, or its ``with`` block exits (with
    the exception that left it, before the helper closes the stream)."""
    # The manager's private (name-mangled) stream, or response for with_streaming_response.
    held = "response" if cls.__name__.endswith("ResponseContextManager") else "stream"
    attribute = f"_{cls.__name__}__{held}"

    def close(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        try:
            return wrapped(*args, **kwargs)
        finally:
            end_helper_stream(instance, None)

    async def aclose(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        try:
            return await wrapped(*args, **kwargs)
        finally:
            end_helper_stream(instance, None)

    def exit_(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        stream = getattr(instance, attribute, None)
        if stream is not None and len(args) > 1:
            end_helper_stream(stream, args[1])
        return wrapped(*args, **kwargs)

    async def aexit(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        stream = getattr(instance, attribute, None)
        if stream is not None and len(args) > 1:
            end_helper_stream(stream, args[1])
        return await wrapped(*args, **kwargs)

    return {"close": close, "aclose": aclose, "exit": exit_, "aexit": aexit}[kind]


def patch() -> None:
    """Wrap every surface once (again where a wrapper of ours was taken away: see
    :func:`lost`). On any failure, undo what was wrapped and re-raise."""
    global _guarded  # noqa: PLW0603 - module-level patch state
    with _lock:
        if _patched:
            if not _lost_locked():
                return
            _unpatch_locked()  # then wrap afresh, on top of whatever is there now
        _guarded = True  # while wrapping; then as the wrapped methods say
        layered = False
        try:
            for module_name, class_name, method, operation in SURFACES:
                try:
                    module = importlib.import_module(module_name)
                except ImportError:
                    continue  # an SDK older than this API (openai.resources.responses)
                cls = getattr(module, class_name, None)
                if cls is None or method not in cls.__dict__:
                    continue  # older SDKs lack some surfaces (e.g. responses.parse)
                factory = _async_wrapper if class_name.startswith("Async") else _sync_wrapper
                layered |= _wrap(cls, method, factory, operation, _API_TYPES.get(module_name))
            for module_name, class_name, method, kind in HELPER_SURFACES:
                try:
                    module = importlib.import_module(module_name)
                except ImportError:
                    continue  # an SDK without this helper
                cls = getattr(module, class_name, None)
                if cls is None or method not in cls.__dict__:
                    continue
                layered |= _wrap(cls, method, None, kind, None)
        except BaseException:
            _unpatch_locked()
            raise
        _guarded = layered
    # Outside the lock: the hook runs at once (and takes the lock) when the module is there.
    for module_name in dict.fromkeys(module for module, *_ in LAZY_SURFACES):
        with _lock:
            if module_name in _awaited:
                continue  # its hook, waiting for the import, wraps it then
            _awaited.add(module_name)
        wrapt.register_post_import_hook(_wrap_lazy, module_name)


def _wrap_lazy(module: Any) -> None:
    """The post-import hook of a LAZY_SURFACES module: wrap its surfaces if the SDK is patched
    (and they are not wrapped yet). Idempotent."""
    global _guarded  # noqa: PLW0603 - module-level patch state
    with _lock:
        _awaited.discard(module.__name__)
        if not _patched:
            return  # uninstalled meanwhile: the next patch() wraps them
        for module_name, class_name, method, operation in LAZY_SURFACES:
            cls = getattr(module, class_name, None) if module_name == module.__name__ else None
            if cls is None or method not in cls.__dict__ or any(
                    entry[0] is cls and entry[1] == method for entry in _patched):
                continue
            factory = _async_wrapper if class_name.startswith("Async") else _sync_wrapper
            # On while wrapping, as in patch(): a call may reach the new wrapper before _wrap
            # has said whether an older layer of ours is below it.
            guarded, _guarded = _guarded, True
            _guarded = guarded | _wrap(cls, method, factory, operation,
                                       _API_TYPES.get(module_name))


def _wrap(cls: type, method: str, factory: Callable[..., Callable[..., Any]] | None,
          operation: str, api_type: str | None) -> bool:
    """Wrap ``cls.method`` with ``factory(operation, original, api_type)`` (``None``: a stream
    helper's wrapper, ``operation`` its kind), or take up our wrapper buried there. Returns
    whether an older layer of ours may be below it (see ``_guarded``)."""
    current = cls.__dict__[method]
    for i, entry in enumerate(_buried):
        if entry[0] is cls and entry[1] == method and _in_chain(entry[3], current):
            _patched.append(_buried.pop(i))  # still there, under another instrumentation's
            return not _none_of_ours_in(cls, method, entry[2])
    wrapper = (_helper_wrapper(cls, operation) if factory is None
               else factory(operation, current, api_type))
    wrapt.wrap_function_wrapper(cls, method, wrapper)
    _patched.append((cls, method, current, cls.__dict__[method]))
    return not _none_of_ours_in(cls, method, current)


def _none_of_ours_in(cls: type, method: str, below: Any) -> bool:
    """Whether ``below`` (what a wrapper of ours wraps) surely holds no wrapper of ours: it is
    what the method was when we first wrapped it, or reaches that through ``__wrapped__``
    links (wrapt's, ``functools.wraps``'s) without meeting one of ours. Anything else (a
    closure, say) may call one of ours. What we first wrapped is never one of ours: a wrapper
    of ours found there (left on the class by a ``reload()`` of this module, which forgot it)
    is a layer below."""
    pristine = _pristine.get((cls, method))
    link = below
    for _ in range(64):
        if link is pristine:
            return True
        wrapper_function = getattr(link, "_self_wrapper", None)
        if getattr(wrapper_function, "__module__", None) == __name__:
            return False
        link = getattr(link, "__wrapped__", None)
        if link is None:
            if pristine is not None:
                return False
            _pristine[(cls, method)] = below  # first sight, and no layer of ours in it
            return True
    return False


def _in_chain(wrapper: Any, current: Any) -> bool:
    """Whether ``wrapper`` is ``current`` or wrapped by it (through ``__wrapped__``)."""
    for _ in range(64):
        if _is(wrapper, current):
            return True
        current = getattr(current, "__wrapped__", None)
        if current is None:
            return False
    return False


def _is(wrapper: Any, found: Any) -> bool:
    """``found`` is ``wrapper``, or the bound form of it that reading it from the class gives
    (what OpenTelemetry's ``unwrap`` puts back: ``getattr(cls, name).__wrapped__``)."""
    return found is wrapper or (isinstance(found, wrapt.BoundFunctionWrapper)
                                and getattr(found, "_self_parent", None) is wrapper)


def _unpatch_locked() -> None:
    while _patched:
        entry = _patched.pop()
        cls, method, original, wrapper = entry
        if _is(wrapper, cls.__dict__.get(method)):
            setattr(cls, method, original)
        else:
            # Another instrumentation (say, OpenTelemetry's OpenAI one) wrapped ours: putting
            # back what was there before ours would remove it too. Ours stays in its chain and
            # passes straight through (its kill switch), until an install() takes it up again.
            _buried.append(entry)


def unpatch() -> None:
    """Restore every wrapped method to the exact object it was before (or, where another
    instrumentation wrapped ours since, leave its layer and ours, passing through, in place)."""
    with _lock:
        _unpatch_locked()


def reset_lock_after_fork() -> None:
    """In a forked child: the lock may have been copied held by a thread it does not have."""
    global _lock  # noqa: PLW0603 - module-level patch state
    _lock = threading.Lock()


def lost() -> list[str]:
    """The wrapped methods whose wrapper of ours is no longer reachable from the class (another
    instrumentation's ``unwrap()`` took ours away with its own, or something replaced the
    method without a ``__wrapped__`` chain to ours): their calls may not be routed.
    ``install()`` wraps them again."""
    with _lock:
        return _lost_locked()


def _lost_locked() -> list[str]:
    return [f"{cls.__module__}.{cls.__qualname__}.{method}"
            for cls, method, _, wrapper in _patched
            if not _in_chain(wrapper, cls.__dict__.get(method))]


def is_patched() -> bool:
    return bool(_patched)
