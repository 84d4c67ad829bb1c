"""Whether the Hugging Face Hub can be reached, decided in a few seconds.

Without this, a preset that needs hub weights on a machine without internet waits through
huggingface_hub's retries (minutes, a hundred log lines) before failing. One short probe first
lets the loaders go straight to the local cache (`local_files_only=True`) and fail at once.
"""

from __future__ import annotations

import os
import threading

PROBE_TIMEOUT_S = 3.0


def hub_offline_by_setting() -> bool:
    """HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1), read now: huggingface_hub reads it once at import."""
    from huggingface_hub import constants

    setting = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return setting.strip().lower() in ("1", "true", "yes", "on") or constants.is_offline_mode()


def hub_endpoint() -> str:
    """$HF_ENDPOINT, default https://huggingface.co."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when an HTTP request to the hub's endpoint gets any answer within `timeout` seconds.

    The request runs in a daemon thread so that a slow DNS lookup, which no socket timeout covers,
    cannot hold the caller longer either. Proxies in the environment are used, as the hub client
    would use them.
    """
    import httpx

    endpoint = endpoint or hub_endpoint()
    answered = threading.Event()

    def probe():
        try:
            httpx.head(endpoint, timeout=timeout, follow_redirects=False)
        except httpx.HTTPError:
            return
        answered.set()

    threading.Thread(target=probe, name="hub-probe", daemon=True).start()
    return answered.wait(timeout)
