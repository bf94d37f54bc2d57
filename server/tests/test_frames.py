"""Frame validation never fails in an unexpected way: any JSON value is either accepted with
well-typed fields or rejected with a FrameError carrying a documented code."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from berrychat.protocol import codes
from berrychat.protocol.frames import SCHEMAS, FrameError, parse_client_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(sorted({f for s in SCHEMAS.values() for f in s} | {"id", "x"}))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SCHEMAS) + ["nope"]),
    st.dictionaries(field_names, json_values, max_size=6),
)
def test_any_frame_is_accepted_or_rejected_cleanly(ftype, fields):
    raw = json.dumps({"type": ftype, **fields})
    try:
        t, _, out = parse_client_frame(raw, max_text=100)
    except FrameError as e:
        assert e.code in codes.ERRORS
        return
    assert t == ftype
    for name, spec in SCHEMAS[ftype].items():
        if spec.required:
            assert name in out
        if name in out and spec.kind == "int":
            assert isinstance(out[name], int) and not isinstance(out[name], bool)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_accepted_or_rejected_cleanly(text):
    try:
        parse_client_frame(text)
    except FrameError as e:
        assert e.code in codes.ERRORS


def test_deeply_nested_json_is_rejected():
    try:
        parse_client_frame("[" * 100000 + "]" * 100000)
    except FrameError as e:
        assert e.code == "bad_json"
