"""JSON parsing that refuses what cannot be stored or echoed: unpaired UTF-16 surrogates.

`json.loads` turns an escape such as `"\\ud800"` into a Python string holding a lone surrogate,
which cannot be encoded as UTF-8. Such a string echoed in an answer (a frame `id`) made the
encoder raise inside the connection's read callback (the socket was dropped without a close
code), and such a `text` made the database driver fail the whole group commit, so the other
senders' messages in that batch were refused too. Refusing it at the parser keeps the damage to
the one bad frame or request.
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    """`json.loads`, plus ValueError for a string (value or key) with an unpaired surrogate."""
    obj = json.loads(text)
    # surrogates only come from \u escapes: a decoded UTF-8 document cannot hold one
    if (b"\\u" if isinstance(text, bytes) else "\\u") in text:
        stack = [obj]
        while stack:
            v = stack.pop()
            if isinstance(v, str):
                _check(v)
            elif isinstance(v, dict):
                for k, x in v.items():
                    _check(k)
                    stack.append(x)
            elif isinstance(v, list):
                stack.extend(v)
    return obj


def _check(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("unpaired UTF-16 surrogate in a JSON string") from None
