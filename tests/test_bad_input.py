"""Bad input over every public entry point: each call works or raises the documented type,
and a refusal leaves the state as it was (hypothesis generates the values)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathoai_memobs import (
    ConfigError,
    GarbageCollectionManager,
    InsufficientMemoryError,
    MemoryConfig,
    MemoryMonitor,
    SessionManager,
    SessionMemoryLimitError,
    SessionNotFoundError,
)
from pathoai_memobs.config import ENV_VARS
from pathoai_memobs.integrations.routes import RouteTable
from pathoai_memobs.reading import Reading, combine
from pathoai_memobs.tools import cli

from .reliability import tally

GIB = 1 << 30
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**60),
    st.integers(max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def attempt(call: Callable[[], object], *allowed: type[BaseException]) -> bool:
    """True when ``call`` worked, False when it raised one of ``allowed``; anything else fails
    the test."""
    tally("inputs tried")
    try:
        call()
    except allowed:
        tally("typed errors")
        return False
    tally("accepted")
    return True


class Fixed:
    def sample(self) -> Reading:
        return combine(8 * GIB, 4 * GIB, None, None, None, 0, 0.0, 0.0)


@SETTINGS
@given(field=st.sampled_from([f.name for f in fields(MemoryConfig) if f.name != "sources"]),
       value=anything)  # fmt: skip
def test_config_fields(field: str, value: object) -> None:
    attempt(lambda: MemoryConfig(**{field: value}), ConfigError)


@SETTINGS
@given(variable=st.sampled_from(sorted(ENV_VARS.values())), text=st.text(max_size=20))
def test_config_variables(variable: str, text: str) -> None:
    if "\x00" in text:
        text = text.replace("\x00", "")
    attempt(lambda: MemoryConfig.from_env({variable: text}), ConfigError)


@SETTINGS
@given(amount=anything, hold=st.booleans())
def test_memory_amounts(amount: Any, hold: bool) -> None:
    m = MemoryMonitor(MemoryConfig(), sampler=Fixed())
    rejected = m.requests_rejected_total

    def call() -> None:
        if hold:
            with m.reserve(amount):
                assert m.reserved_bytes > 0 or amount == 0
        else:
            m.check_memory_available(amount)

    ok = attempt(call, ValueError, InsufficientMemoryError)
    assert m.reserved_bytes == 0
    if not ok and m.requests_rejected_total == rejected:
        tally("refusals that changed nothing")


@SETTINGS
@given(timeout=anything, limit=anything, interval=anything, top_k=anything)
def test_session_manager_options(timeout: Any, limit: Any, interval: Any, top_k: Any) -> None:
    attempt(
        lambda: SessionManager(
            timeout, limit, cleanup_interval_minutes=interval, top_k=top_k
        ).create_session(),
        ValueError,
    )


@SETTINGS
@given(sid=anything, key=st.text(min_size=1, max_size=8), value=anything)
def test_session_ids_keys_and_values(sid: Any, key: str, value: Any) -> None:
    sessions = SessionManager(max_memory_gb=1)
    real = sessions.create_session()
    before = sessions.aggregates()
    attempt(lambda: sessions.update_session(sid, **{key: value}), SessionNotFoundError, TypeError)
    assert sessions.aggregates().total_bytes == before.total_bytes and len(sessions) == 1
    attempt(lambda: sessions.get_session(sid), TypeError)
    attempt(lambda: sessions.delete_session(sid), TypeError)
    assert sessions.get_session(real) is not None
    attempt(lambda: sessions.update_session(real, **{key: value}), SessionMemoryLimitError)


@SETTINGS
@given(needed=anything, reason=anything)
def test_eviction_amounts_and_reasons(needed: Any, reason: Any) -> None:
    sessions = SessionManager()
    for _ in range(3):
        sessions.create_session()
    if not attempt(lambda: sessions.evict_least_recently_used(needed, reason=reason), ValueError):
        assert len(sessions) == 3
        tally("refusals that changed nothing")


@SETTINGS
@given(fn=st.one_of(anything, st.just(lambda: None)), name=anything, priority=anything)
def test_cleanup_callback_registrations(fn: Any, name: Any, priority: Any) -> None:
    m = MemoryMonitor(MemoryConfig(), sampler=Fixed())
    m.register_cleanup_callback(lambda: None, name="existing")
    if not attempt(
        lambda: m.register_cleanup_callback(fn, name=name, priority=priority),
        TypeError,
        ValueError,
    ):
        assert m.cleanup_callback_names == ("existing",)
        tally("refusals that changed nothing")


@SETTINGS
@given(level=anything, generation=anything, reason=anything)
def test_gc_levels_generations_and_reasons(level: Any, generation: Any, reason: Any) -> None:
    manager = GarbageCollectionManager()
    before = dict(manager.triggered)
    attempt(lambda: GarbageCollectionManager(level), ValueError, ConfigError)
    if not attempt(lambda: manager.collect_with_stats(generation, reason=reason), ValueError):
        assert dict(manager.triggered) == before


@SETTINGS
@given(
    routes=st.one_of(
        anything,
        st.dictionaries(
            st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=14), st.binary()),
            anything,
            max_size=3,
        ),
        st.dictionaries(
            st.sampled_from(["/x", "GET /x", "POST /a/*", "HEAD /", "FETCH /x", "x", "/"]),
            anything,
            max_size=3,
        ),
    )
)
def test_route_tables(routes: Any) -> None:
    attempt(lambda: RouteTable.compile(routes), TypeError, ValueError)


@SETTINGS
@given(cooldown=anything, budget=anything, interval=anything, source=anything)
def test_monitor_options(cooldown: Any, budget: Any, interval: Any, source: Any) -> None:
    attempt(
        lambda: MemoryMonitor(
            MemoryConfig(),
            source=source,
            emergency_cooldown_s=cooldown,
            callback_budget_s=budget,
            proactive_gc_interval_s=interval,
        ),
        ValueError,
        TypeError,
    )


@settings(max_examples=25, deadline=None)
@given(port=anything, auth=anything)
def test_exporter_options(port: Any, auth: Any) -> None:
    from prometheus_client import CollectorRegistry

    from pathoai_memobs.exporters.prometheus import start_http_server

    servers = []

    def call() -> None:
        servers.append(start_http_server(port, registry=CollectorRegistry(), basic_auth=auth))

    attempt(call, ValueError, TypeError, OSError)  # OSError: a port already taken
    for server in servers:
        server.stop()


@pytest.mark.parametrize("parse", [cli._seconds, cli._duration, cli._port, cli._writable_file])
@SETTINGS
@given(text=st.text(max_size=12))
def test_cli_flag_values(parse: Callable[[str], object], text: str) -> None:
    attempt(lambda: parse(text), ValueError)
