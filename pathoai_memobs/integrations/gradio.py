"""Gradio: reserve memory around the function Gradio's queue runs, not around the HTTP
request that enqueued it.

A Gradio event is enqueued by one request and run later by the queue's workers, its result
streamed back over another connection, so route middleware sees neither when the work runs
nor how long. ``reserving`` wraps the function itself: the reservation is taken when the
queue starts it (waiting in line up to ``wait_s``) and held until it returns, or, for a
generator, until it is exhausted or closed. Short of memory, the user sees a ``gr.Error``
saying when to retry instead of a stack trace.

    @reserving(monitor, 1500)
    def segment(slide): ...
    gr.Interface(segment, "image", "image")

Gradio is imported only when a refusal must be shown, so this module loads without it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..exceptions import InsufficientMemoryError

if TYPE_CHECKING:
    from ..monitor import MemoryMonitor

F = TypeVar("F", bound=Callable[..., Any])
#: MiB for a call, or a callable that sizes it from the function's own arguments.
CallSize = float | Callable[..., float]


def refusal_message(exc: InsufficientMemoryError) -> str:
    """What the user reads: that memory is short and when to try again (no internals)."""
    retry = max(1, round(exc.retry_after_s or 1))
    return f"The service is short of memory right now; please try again in {retry} s."


def _shown(exc: InsufficientMemoryError) -> Exception:
    """Gradio's own error type (imported only now), which Gradio shows to the user."""
    gr = importlib.import_module("gradio")
    return cast("Exception", gr.Error(refusal_message(exc)))


def reserving(
    monitor: MemoryMonitor, mb: CallSize, *, wait_s: float = 10.0, gpu_mb: float = 0.0,
    device: int = 0,
) -> Callable[[F], F]:  # fmt: skip
    """Decorate a Gradio function (plain, async, generator or async generator) so each call
    holds ``mb`` MiB (or ``mb(*args, **kwargs)``), and ``gpu_mb`` MiB on GPU ``device``,
    while it runs; see the module docstring."""
    if not callable(mb) and (isinstance(mb, bool) or not isinstance(mb, (int, float))):
        raise TypeError(f"mb must be a number of MiB or a callable of the arguments, got {mb!r}")

    gpu: dict[str, Any] = {"gpu_mb": gpu_mb, "device": device}

    def size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        return float(mb(*args, **kwargs)) if callable(mb) else float(mb)

    def decorate(fn: F) -> F:
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                try:
                    async with monitor.reserve_async(size(args, kwargs), wait_s=wait_s, **gpu):
                        async for item in fn(*args, **kwargs):
                            yield item
                except InsufficientMemoryError as exc:
                    raise _shown(exc) from exc

            return cast("F", agen)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def coro(*args: Any, **kwargs: Any) -> Any:
                try:
                    async with monitor.reserve_async(size(args, kwargs), wait_s=wait_s, **gpu):
                        return await fn(*args, **kwargs)
                except InsufficientMemoryError as exc:
                    raise _shown(exc) from exc

            return cast("F", coro)
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
                try:
                    with monitor.reserve(size(args, kwargs), wait_s=wait_s, **gpu):
                        yield from fn(*args, **kwargs)
                except InsufficientMemoryError as exc:
                    raise _shown(exc) from exc

            return cast("F", gen)

        @functools.wraps(fn)
        def plain(*args: Any, **kwargs: Any) -> Any:
            try:
                with monitor.reserve(size(args, kwargs), wait_s=wait_s, **gpu):
                    return fn(*args, **kwargs)
            except InsufficientMemoryError as exc:
                raise _shown(exc) from exc

        return cast("F", plain)

    return decorate
