"""Server-sent events, as both APIs stream them."""

from __future__ import annotations

import json
from typing import Any

# no-cache: never replayed from a cache; X-Accel-Buffering: nginx passes each event on at once.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: Any) -> str:
    """One `data:` event of compact JSON (non-ASCII kept as is: the stream is UTF-8)."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
