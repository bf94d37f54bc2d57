"""Fuzzing the config loader (`berrychat.config`): any file content, any nesting of the known
sections and keys with any JSON values, and any `BERRYCHAT_*` environment either loads into
settings that respect every declared range and choice, or fails with one `ConfigError` that
names a key (never a KeyError, TypeError, OverflowError or a traceback).

Sizes: a few hundred inputs in `make test`, the full count under `make fuzz` (harness_fuzz.py).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from harness_fuzz import FULL, SEED, Counter, fuzz_settings, memory_growth, mutations
from hypothesis import given
from hypothesis import strategies as st
from support import DESIGN_EXAMPLE, write_config

from berrychat import config

SECTIONS = {
    name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in config._SECTIONS.items()
}
REPLICA_FIELDS = {f.name: f for f in dataclasses.fields(config.ReplicaSettings)}
TOP = sorted(set(SECTIONS) | set(config._FREEFORM) | {"replicas"})

_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 65535, 65536, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["true", "off", "1", "1e400", "nan", "0x10", " 8080", "mysql", "FULL"]),
)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _value(f: dataclasses.Field) -> st.SearchStrategy:
    meta = f.metadata or {}
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices", ())
    options = [_scalar]
    if f.type in (int, float) and lo is not None and hi is not None:
        edges = sorted({lo, hi, lo - 1, hi + 1, (lo + hi) // 2})
        options.append(st.sampled_from([int(e) if f.type is int else e for e in edges]))
        if f.type is float:
            options.append(st.floats(min_value=lo - 1, max_value=hi + 1))
    if choices:
        options.append(st.sampled_from(choices))
    return st.one_of(*options)


@st.composite
def section(draw: st.DrawFn, fields: dict[str, dataclasses.Field]) -> dict:
    out = {}
    for name, f in fields.items():
        if draw(st.integers(0, 3)) == 0:
            out[name] = draw(_value(f))
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.text(max_size=8))] = draw(_scalar)  # a typo
    return out


@st.composite
def raw_config(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 19)) == 0:
        return draw(_json)  # not even an object
    cfg: dict = {}
    for name in draw(st.lists(st.sampled_from(TOP), max_size=6, unique=True)):
        if name in SECTIONS:
            cfg[name] = (
                draw(st.one_of(section(SECTIONS[name]), _json))
                if draw(st.integers(0, 9)) == 0
                else draw(section(SECTIONS[name]))
            )
        elif name == "replicas":
            cfg[name] = draw(st.one_of(st.lists(section(REPLICA_FIELDS), max_size=3), _json))
        else:
            cfg[name] = draw(st.one_of(st.dictionaries(st.text(max_size=5), _scalar), _json))
    if draw(st.integers(0, 19)) == 0:
        cfg[draw(st.text(max_size=8))] = {}
    return cfg


@st.composite
def environment(draw: st.DrawFn) -> dict[str, str]:
    env = {}
    for _ in range(draw(st.integers(0, 3))):
        sec = draw(st.sampled_from(sorted(SECTIONS)))
        key = draw(st.sampled_from(sorted(SECTIONS[sec])))
        val = draw(
            st.one_of(
                st.text(max_size=10),
                st.sampled_from(["yes", "no", "2", "-5", "1e999", "inf", "nan", "9" * 30]),
            )
        )
        env[f"BERRYCHAT_{sec.upper()}__{key.upper()}"] = val
    if draw(st.booleans()):
        env["PATH"] = "/usr/bin"  # unrelated variables are ignored
    return env


def _respects_ranges(s: config.Settings) -> None:
    for name, fields in SECTIONS.items():
        sec = getattr(s, name)
        for fname, f in fields.items():
            v = getattr(sec, fname)
            meta = f.metadata or {}
            assert type(v) is f.type or (f.type is float and type(v) is float), (name, fname, v)
            if meta.get("lo") is not None:
                assert meta["lo"] <= v <= meta["hi"], (name, fname, v)
            if meta.get("choices"):
                assert v in meta["choices"], (name, fname, v)
    assert s.heartbeat.timeout_seconds > s.heartbeat.interval_seconds


CFG = Counter("config (from_dict + environment)")


@fuzz_settings(full=4_000, ci=300)
@given(raw_config(), environment())
def _from_dict(raw: object, env: dict[str, str]) -> None:
    def run() -> None:
        try:
            s = config.from_dict(raw, env=env)
        except config.ConfigError as e:
            assert str(e).startswith("config error: ") and isinstance(e.key, str)
            return
        _respects_ranges(s)
        again = config.from_dict(config.to_dict(s), env={})  # what it prints, it reads back
        assert config.to_dict(again) == config.to_dict(s)
        json.dumps(config.redacted(s))

    CFG.timed(run)


def test_fuzz_config_from_dict() -> None:
    _from_dict()
    CFG.report()


def test_fuzz_config_files_and_memory(tmp_path: Path) -> None:
    """Byte mutations of real config files read through `config.load` (the path `serve` and
    `check-config` take), in batches under tracemalloc."""
    count = Counter("config files (mutations)")
    rng = random.Random(SEED + 2)
    samples = [
        json.dumps(DESIGN_EXAMPLE).encode(),
        json.dumps(
            {
                "limits": {"max_frame_bytes": 65536, "group_commit_ms": 2.5},
                "redis": {"enabled": True, "shards": 16},
                "replicas": [{"host": "10.0.0.2", "port": 3306}],
                "heartbeat": {"interval_seconds": 25, "timeout_seconds": 60},
            }
        ).encode(),
        b'{"auth": {"open_registration": false, "token_ttl_seconds": 86400}}',
    ]
    path = tmp_path / "config.json"
    per_batch = 2_000 if FULL else 100

    def batch(_: int) -> None:
        for data in mutations(samples, rng, per_batch):
            write_config(path, data)

            def run() -> None:
                try:
                    _respects_ranges(config.load(path, env={}))
                except config.ConfigError as e:
                    assert str(e).startswith("config error: ")

            count.timed(run)

    grown = memory_growth(batch)
    count.report()
    assert grown < 64 * 1024, f"{grown} bytes kept after {count.n} inputs"


def test_non_utf8_config_file_is_one_clear_error(tmp_path: Path) -> None:
    """Regression (found by the mutation fuzzer): a file that is not UTF-8 made `load` raise
    UnicodeDecodeError, so `serve`/`check-config` died with a traceback instead of one line."""
    path = write_config(tmp_path / "config.json", b'{"server": {"host": "\xdd\xdd"}}')
    try:
        config.load(path, env={})
    except config.ConfigError as e:
        assert "not UTF-8" in str(e) and str(path) in str(e)
    else:
        raise AssertionError("accepted a file that is not UTF-8")


@pytest.mark.parametrize(
    "raw,env",
    [
        ({}, {"BERRYCHAT_HEARTBEAT__INTERVAL_SECONDS": "nan"}),
        ({}, {"BERRYCHAT_LIMITS__GROUP_COMMIT_MS": "NaN"}),
        ({"database": {"connect_timeout": float("nan")}}, {}),
    ],
)
def test_nan_is_not_a_number_in_range(raw: dict, env: dict) -> None:
    """Regression (found by the fuzzer): NaN passed every range check (`nan < lo` is false), so
    `BERRYCHAT_HEARTBEAT__INTERVAL_SECONDS=nan` or a NaN in the file was accepted."""
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(raw, env=env)
    assert "expected number" in str(e.value)
