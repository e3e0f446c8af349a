"""Admission for a request on one session, so that waiting requests never hold memory
the first in line needs.

While the request waits in line its session is kept (never expired or evicted) but may be
spilled like an idle one: with every worker's requests waiting on resident sessions, the
head of one worker's line could otherwise never be admitted. A spilled session's bytes
are booked in the same decision as the request (asked again at each look), so once
admitted the session is pinned and read back inside that reservation, without queueing a
second time behind the very requests it waited with; the booked bytes are then given back,
being the session's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .gate import AdmissionGate, GpuAsk
    from .session_manager import SessionManager


@contextmanager
def hold_session(
    gate: AdmissionGate, sessions: SessionManager, session_id: str, required: int,
    wait_s: float, *, gpu: GpuAsk = None,
) -> Iterator[None]:  # fmt: skip
    """Hold ``required`` bytes for a request on ``session_id``, the session pinned and in
    memory for the block. SessionNotFoundError where it is gone, InsufficientMemoryError
    where it does not fit in time, SpillCorruptError where its files are not intact."""
    with (
        sessions.use(session_id, waiting=True),
        gate.hold(required, wait_s, gpu=gpu, session=session_id) as grant,
        sessions.use(session_id, restore=False),  # pinned: no spill from here on
    ):
        sessions.restore(session_id, booked=grant.extra)
        gate.give_back(grant)
        yield


@asynccontextmanager
async def hold_session_async(
    gate: AdmissionGate, sessions: SessionManager, session_id: str, required: int,
    wait_s: float, *, gpu: GpuAsk = None,
) -> AsyncIterator[None]:  # fmt: skip
    """``hold_session`` for an event loop: the wait and the read never block it."""
    with sessions.use(session_id, waiting=True):
        async with gate.hold_async(required, wait_s, gpu=gpu, session=session_id) as grant:
            with sessions.use(session_id, restore=False):  # pinned: no spill from here on
                await sessions.restore_async(session_id, booked=grant.extra)
                gate.give_back(grant)
                yield
