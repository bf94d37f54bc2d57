"""docs/protocol.md stays in step with the code: every frame type, error code and close code
the server can produce is documented there."""

import re
from pathlib import Path

import pytest

from berrychat.protocol import codes
from berrychat.protocol.frames import SCHEMAS

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@pytest.fixture(scope="module")
def doc() -> str:
    if not DOC.exists():
        pytest.skip("docs/protocol.md is not next to this checkout")
    return DOC.read_text(encoding="utf-8")


def test_every_frame_type_is_documented(doc):
    for ftype in SCHEMAS:
        assert f"`{ftype}`" in doc, ftype


def test_every_error_code_is_documented_with_its_retry_flag(doc):
    for code, (retryable, status, _) in codes.ERRORS.items():
        row = re.search(rf"^\| `{re.escape(code)}`[^|]*\| (yes|no) \| (\d+) \|", doc, re.M)
        assert row, code
        assert row.group(1) == ("yes" if retryable else "no"), code
        assert int(row.group(2)) == status, code


def test_every_close_code_is_documented(doc):
    for code in codes.CLOSE_CODES:
        assert re.search(rf"^\| {code} \|", doc, re.M), code
