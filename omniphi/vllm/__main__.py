"""`python -m omniphi.vllm serve MODEL_DIR [vLLM options]`: vLLM's OpenAI server for an omniphi directory.

It is `vllm serve MODEL_DIR` with omniphi's chat template as Jinja (`--chat-template`, content
format `openai`), so text, image and audio parts are rendered where `omniphi ask` renders them (in
their order, or a message's media first where the model's `media_placement` says so). (Plain `vllm serve` uses the tokenizer's own template and puts every
placeholder before the text.) Any further option goes to vLLM unchanged.

`python -m omniphi.vllm chat-template MODEL_DIR` prints that template, for a `vllm serve` line.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
from pathlib import Path


def chat_template(model_dir: str) -> str:
    from omniphi.processing import OmniProcessor
    from omniphi.templates import jinja_chat_template

    processor = OmniProcessor.from_pretrained(model_dir)
    return jinja_chat_template(processor, with_audio=processor.config.audio_config is not None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m omniphi.vllm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="vLLM's OpenAI-compatible server for MODEL_DIR")
    serve.add_argument("model_dir")
    template = commands.add_parser("chat-template", help="print omniphi's chat template as Jinja")
    template.add_argument("model_dir")
    args, vllm_args = parser.parse_known_args(argv)
    if not (Path(args.model_dir) / "config.json").is_file():
        parser.error(f"{args.model_dir} is not a model directory (no config.json); `omniphi merge` writes one")
    if args.command == "chat-template":
        if vllm_args:
            parser.error(f"unrecognized arguments: {' '.join(vllm_args)}")
        print(chat_template(args.model_dir))
        return
    template_file = Path(tempfile.mkdtemp(prefix="omniphi-vllm-")) / "chat_template.jinja"
    template_file.write_text(chat_template(args.model_dir))
    sys.argv = ["vllm", "--model", args.model_dir, "--chat-template", str(template_file),
                "--chat-template-content-format", "openai", *vllm_args]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
