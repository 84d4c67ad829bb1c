"""The server's configuration and the state its routes share (one `ServeState` per app).

A module of its own so that the routers and the admission checks read it without importing
`serve/app.py`, which imports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastapi import Request

from omniphi.chat import AudioMode, GenerationSettings
from omniphi.media import MediaLimits
from omniphi.serve.engine import Engine
from omniphi.serve.store import Store

# Host names a request may name in its Host header without configuration: a DNS-rebinding page
# reaches a loopback server under its own (attacker's) name, which is not among these.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServeConfig:
    api_key: str | None = None
    data_dir: str | Path | None = None  # None: $OMNIPHI_DATA or ~/.local/share/omniphi
    allow_remote_media: bool = False  # server-side fetching of http(s) image URLs is an SSRF hole
    cors_origins: list[str] = field(default_factory=list)  # none: same-origin only
    # Host header names accepted besides LOOPBACK_HOSTS (and *.localhost): the --host address and
    # names given with --allowed-host, e.g. a LAN name. "*" accepts any (behind a proxy that checks).
    allowed_hosts: list[str] = field(default_factory=list)
    max_request_bytes: int = 32 * 2**20
    max_images: int = 8
    max_audio_clips: int = 4
    # Messages one /v1 request may carry, and the newest stored messages an /api turn sends to the
    # model: the context holds far fewer, and each message costs work before trimming.
    max_messages: int = 1000
    media_limits: MediaLimits = field(default_factory=MediaLimits)
    max_queue: int = 8
    max_batch: int = 4  # requests answered at once (the engine decodes them together)
    request_timeout_s: float = 300.0
    # Defaults for the page (GET /api/settings/defaults) and for requests that leave them out.
    system_prompt: str = "You are a helpful assistant. Answer clearly and concisely."
    # None: the model's own (its generation_config.json; greedy where it says nothing)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    audio_mode: AudioMode = "native"

    def generation(self, model_defaults: GenerationSettings) -> GenerationSettings:
        """What a request that sets nothing gets: this config's values over the model's."""
        chosen = {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_tokens}
        return replace(model_defaults, **{k: v for k, v in chosen.items() if v is not None}).validate()


@dataclass
class ServeState:
    config: ServeConfig
    engine: Engine
    store: Store
    owns_engine: bool
    generation: GenerationSettings  # the defaults of every request (ServeConfig.generation)
    started_at: float = field(default_factory=time.time)


def state(request: Request) -> ServeState:
    return request.app.state.omniphi
