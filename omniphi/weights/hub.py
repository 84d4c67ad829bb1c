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


# Presets whose parts are hub repos (omniphi.presets.PHI2_PARTS): the CLI starts their probe early.
PRESETS_FROM_HUB = ("phi2",)

_probes: dict[str, threading.Event] = {}  # endpoint → set once the hub answered


def start_probe(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> threading.Event:
    """Begin asking the hub in a daemon thread (once per endpoint and process), so the answer can
    come while torch and transformers import; the Event is set if the hub answered within `timeout`.

    A thread, because a slow DNS lookup is covered by no socket timeout. Proxies in the environment
    are used, as the hub client would use them."""
    import httpx

    endpoint = endpoint or hub_endpoint()
    if endpoint in _probes:
        return _probes[endpoint]
    answered = _probes[endpoint] = threading.Event()

    def probe():
        try:
            httpx.head(endpoint, timeout=timeout, follow_redirects=False)
        except httpx.HTTPError:
            return
        answered.set()

    threading.Thread(target=probe, name="hub-probe", daemon=True).start()
    return answered


def start_probe_for(spec: str) -> None:
    """Start the probe now if `spec` is a preset that loads from the hub and the hub is not off."""
    if spec in PRESETS_FROM_HUB and not hub_offline_by_setting():
        start_probe()


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when an HTTP request to the hub's endpoint got any answer: the probe `start_probe`
    started (or starts now), waited for at most `timeout` seconds more."""
    return start_probe(endpoint, timeout).wait(timeout)
