"""`omniphi serve`: arguments and the uvicorn runner (the CLI plugs these in)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

import uvicorn

from omniphi.serve.state import ServeConfig

# Requests decoding together, per engine: on a CPU more than a few only slow each other down.
DEFAULT_MAX_BATCH = {"omniphi": 4, "vllm": 32}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from omniphi.cli_support import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes the server to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("OMNIPHI_API_KEY") or None,
                        help="require 'Authorization: Bearer KEY' on /v1 and /api (default: $OMNIPHI_API_KEY)")
    parser.add_argument("--data-dir", default=None,
                        help="where conversations are stored (default: $OMNIPHI_DATA or ~/.local/share/omniphi)")
    parser.add_argument("--allow-remote-media", action="store_true",
                        help="let requests reference http(s) image URLs that the server fetches (off: SSRF risk)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow cross-origin requests from ORIGIN (repeatable; none by default)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="also answer requests for host NAME (repeatable), e.g. a LAN name or a proxy's; loopback "
                             "names and the --host address always work, others are refused (DNS rebinding)")
    parser.add_argument("--max-queue", type=int, default=8, help="requests that may wait for the model (then 429)")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request, queue included")
    parser.add_argument("--audio-mode", choices=("native", "transcribe"), default="native",
                        help="default way audio reaches the model")
    parser.add_argument("--max-batch", type=int, default=None,
                        help=f"requests answered at once (default {DEFAULT_MAX_BATCH['omniphi']}; with --engine vllm "
                             f"{DEFAULT_MAX_BATCH['vllm']}, as vLLM batches them itself)")
    engine = parser.add_argument_group("answering on a vLLM server (README: Scale-out serving on vLLM)")
    engine.add_argument("--engine", choices=tuple(DEFAULT_MAX_BATCH), default="omniphi",
                        help="omniphi: load --model here and answer with it; vllm: keep the page, the stored "
                             "conversations and both APIs here and let the vLLM server at --vllm-url answer (--model "
                             "then names the model it serves, for its card, defaults and transcribe mode's Whisper)")
    engine.add_argument("--vllm-url", default="http://127.0.0.1:8001/v1", metavar="URL",
                        help="the vLLM server's OpenAI API (default http://127.0.0.1:8001/v1)")
    engine.add_argument("--vllm-model", default=None, metavar="NAME",
                        help="the served model's name there (default: the first one it lists)")
    engine.add_argument("--vllm-api-key", default=os.environ.get("VLLM_API_KEY") or None, metavar="KEY",
                        help="the vLLM server's --api-key (default: $VLLM_API_KEY)")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if args.max_queue < 0:
        raise ValueError("--max-queue must be >= 0")
    max_batch = args.max_batch if args.max_batch is not None else DEFAULT_MAX_BATCH[args.engine]
    if max_batch < 1:
        raise ValueError("--max-batch must be >= 1")
    if args.engine == "vllm" and getattr(args, "media_placement", "auto") != "auto":
        raise ValueError("--media-placement works with --engine omniphi; the vLLM server renders prompts with the "
                         "model's own media_placement (its config.json)")
    return ServeConfig(
        api_key=args.api_key or None,
        data_dir=Path(args.data_dir).expanduser() if args.data_dir else None,
        allow_remote_media=args.allow_remote_media,
        cors_origins=list(args.cors_origin or []),
        allowed_hosts=list(getattr(args, "allowed_host", None) or []) + _bound_names(args.host),
        max_queue=args.max_queue,
        max_batch=max_batch,
        request_timeout_s=args.request_timeout,
        audio_mode=args.audio_mode,
    )


def run_serve(args: argparse.Namespace, *, assistant=None) -> int:
    """Load the model, print the URL, serve until Ctrl-C / SIGTERM (then finish gracefully).
    `assistant` replaces loading (tests run the real server process around a fake)."""
    import uvicorn

    from omniphi.serve.app import create_app

    config = config_from_args(args)
    if not _is_loopback(args.host) and not config.api_key:
        print(f"omniphi: warning: serving on {args.host} without --api-key: anyone who can reach this "
              "address can use the model and read the stored conversations", file=sys.stderr)
    if assistant is None and args.engine == "vllm":
        from omniphi.runtime.remote import RemoteAssistant

        print(f"omniphi: answering with the vLLM server at {args.vllm_url} ...", file=sys.stderr, flush=True)
        assistant = RemoteAssistant.connect(args.vllm_url, args.model, model=args.vllm_model,
                                            api_key=args.vllm_api_key)
    elif assistant is None:
        from omniphi.runtime.assistant import Assistant

        print(f"omniphi: loading model {args.model} ...", file=sys.stderr, flush=True)
        assistant = Assistant.load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
                                   media_placement=args.media_placement)
    app = create_app(assistant, config)
    server = _Server(uvicorn.Config(
        # A streaming answer may hold shutdown up to this long; then it is cancelled (and stored).
        app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5, lifespan="on",
    ))
    server.run()
    return 0


class _Server(uvicorn.Server):
    """Prints the URL once listening (with the real port when --port 0)."""

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started and getattr(self, "servers", None):
            port = self.servers[0].sockets[0].getsockname()[1]
            host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
            name = self.config.app.state.omniphi.engine.model_name
            print(f"omniphi: serving {name} on http://{host}:{port}/", flush=True)


def _bound_names(host: str) -> list[str]:
    """The --host address as a name clients may use (a wildcard address names no host)."""
    return [] if host in ("0.0.0.0", "::", "") else [host]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
