"""MemoryConfig and MemoryManagementDefaults: the reference's values, env parsing, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pathoai_memobs import ConfigError, MemoryConfig, MemoryManagementDefaults

REFERENCE_DEFAULTS = {
    "session_timeout_minutes": 30,
    "max_session_memory_gb": 2.0,
    "session_cleanup_interval_minutes": 5,
    "memory_warning_threshold": 85.0,
    "monitoring_interval_sec": 1.0,
    "enable_background_monitoring": False,
    "gc_aggressiveness": "moderate",
    "enable_auto_gc": True,
    "gc_threshold_gen0": 700,
    "gc_threshold_gen1": 10,
    "gc_threshold_gen2": 10,
    "emergency_cleanup_threshold_mb": 500.0,
    "enable_proactive_gc": True,
    "proactive_gc_threshold": 90.0,
    "enable_request_rejection": True,
}


def test_defaults_are_the_reference_block_and_immutable() -> None:
    d = MemoryManagementDefaults()
    assert {f.name: getattr(d, f.name) for f in dataclasses.fields(d)} == REFERENCE_DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.session_timeout_minutes = 5  # type: ignore[misc]


def test_config_defaults_follow_the_defaults_block() -> None:
    c = MemoryConfig.from_env({})
    for name, value in REFERENCE_DEFAULTS.items():
        assert getattr(c, name) == value, name
    assert c.max_memory_percent == 85.0
    assert c.aggressive_gc is False
    assert c.effective_gc_aggressiveness == "moderate"
    assert all(c.source_of(n) == "default" for n in c.as_dict())


def test_from_env_reads_the_four_variables() -> None:
    c = MemoryConfig.from_env(
        {
            "MAX_MEMORY_PERCENT": "80",
            "MAX_SESSION_MEMORY_GB": "1.5",
            "SESSION_TIMEOUT_MINUTES": " 10 ",
            "AGGRESSIVE_GC": "YES",
        }
    )
    assert (c.max_memory_percent, c.max_session_memory_gb, c.session_timeout_minutes) == (
        80.0,
        1.5,
        10.0,
    )
    assert c.aggressive_gc is True and c.effective_gc_aggressiveness == "high"
    assert c.source_of("max_memory_percent") == "env:MAX_MEMORY_PERCENT"
    assert c.source_of("monitoring_interval_sec") == "default"


def test_from_env_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_MEMORY_PERCENT", "70")
    monkeypatch.setenv("SESSION_TIMEOUT_MINUTES", "")
    c = MemoryConfig.from_env()
    assert c.max_memory_percent == 70.0
    assert c.session_timeout_minutes == 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("NO", False),
        ("", False),
    ],
)
def test_aggressive_gc_words(text: str, expected: bool) -> None:
    assert MemoryConfig.from_env({"AGGRESSIVE_GC": text}).aggressive_gc is expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_MEMORY_PERCENT", "eighty"),
        ("MAX_MEMORY_PERCENT", "nan"),
        ("MAX_MEMORY_PERCENT", "inf"),
        ("MAX_MEMORY_PERCENT", "0"),
        ("MAX_MEMORY_PERCENT", "-5"),
        ("MAX_MEMORY_PERCENT", "100.5"),
        ("MAX_MEMORY_PERCENT", "90"),  # not below the 90 % proactive-GC threshold
        ("MAX_MEMORY_PERCENT", "95"),
        ("MAX_SESSION_MEMORY_GB", "0"),
        ("MAX_SESSION_MEMORY_GB", "-1"),
        ("MAX_SESSION_MEMORY_GB", "2GB"),
        ("MAX_SESSION_MEMORY_GB", "-inf"),
        ("SESSION_TIMEOUT_MINUTES", "0"),
        ("SESSION_TIMEOUT_MINUTES", "-30"),
        ("SESSION_TIMEOUT_MINUTES", "NaN"),
        ("AGGRESSIVE_GC", "maybe"),
        ("AGGRESSIVE_GC", "on"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        MemoryConfig.from_env({variable: value})
    assert info.value.variable == variable
    assert variable in str(info.value)
    assert repr(value) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_first_bad_variable_wins_and_nothing_is_built() -> None:
    with pytest.raises(ConfigError, match="SESSION_TIMEOUT_MINUTES"):
        MemoryConfig.from_env({"SESSION_TIMEOUT_MINUTES": "x", "MAX_MEMORY_PERCENT": "80"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("monitoring_interval_sec", 0),
        ("monitoring_interval_sec", math.nan),
        ("emergency_cleanup_threshold_mb", -1.0),
        ("proactive_gc_threshold", 101.0),
        ("gc_threshold_gen0", -1),
        ("gc_threshold_gen1", 1.5),
        ("gc_aggressiveness", "extreme"),
        ("enable_auto_gc", "yes"),
        ("max_session_memory_gb", True),
        ("session_cleanup_interval_minutes", "5"),
    ],
)
def test_code_constructed_config_is_validated_by_field_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        MemoryConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.variable == field


def test_warning_must_stay_below_a_custom_proactive_threshold() -> None:
    assert MemoryConfig(max_memory_percent=92, proactive_gc_threshold=95).max_memory_percent == 92
    with pytest.raises(ConfigError, match="max_memory_percent"):
        MemoryConfig(max_memory_percent=96, proactive_gc_threshold=95)


def test_config_is_immutable_and_replace_revalidates() -> None:
    c = MemoryConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_memory_percent = 50  # type: ignore[misc]
    assert dataclasses.replace(c, max_memory_percent=50).max_memory_percent == 50
    with pytest.raises(ConfigError):
        dataclasses.replace(c, max_memory_percent=0)
    assert c.source_of("max_memory_percent") == "default"
    assert MemoryConfig(max_memory_percent=50).source_of("max_memory_percent") == "code"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_session_memory_gb", 1e300),
        ("emergency_cleanup_threshold_mb", 1e303),
        ("session_timeout_minutes", 1e300),
        ("monitoring_interval_sec", 1e9),
        ("gc_threshold_gen0", 2**31),
        ("gc_threshold_gen2", 2**64),
    ],
)
def test_values_past_their_real_bounds_are_refused_up_front(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        MemoryConfig(**{field: value})  # type: ignore[arg-type]


def test_a_variable_past_its_bound_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="MAX_SESSION_MEMORY_GB"):
        MemoryConfig.from_env({"MAX_SESSION_MEMORY_GB": "1e300"})
