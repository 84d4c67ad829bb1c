"""What the starter model says about itself: greedy generation defaults and its model card.

`make starter` writes both into the packaged weights (omniphi/starter_weights), next to a sample
picture and a spoken question from the held-out test fixtures, so the page shows a newcomer
suggestions that this model can answer, and nothing it cannot (see omniphi/model_card.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omniphi.model_card import MODEL_CARD_FILE, greedy_generation_config, read_model_card

# Greedy: a 135M model sampled at 0.7 says "The capital of France is France." 3 times in 10.
MAX_NEW_TOKENS = 256
SAMPLES = "samples"


def write_starter_card(out: str | Path, picture: str | Path, circle_colour: str, spoken_question: str | Path,
                       spoken_text: str) -> None:
    """Write generation_config.json, model_card.json and the card's two sample files into `out`.
    `picture` is a held-out shapes picture with a circle of `circle_colour` and `spoken_question`
    a recording of `spoken_text` about it (the fixture export_fixture writes has both)."""
    out = Path(out)
    (out / SAMPLES).mkdir(parents=True, exist_ok=True)
    picture_name = f"{SAMPLES}/shapes{Path(picture).suffix}"
    audio_name = f"{SAMPLES}/question{Path(spoken_question).suffix}"
    shutil.copy(picture, out / picture_name)
    shutil.copy(spoken_question, out / audio_name)
    greedy_generation_config(MAX_NEW_TOKENS).save_pretrained(out)
    card = {
        "name": "omniphi starter",
        "summary": ("A small offline model (SmolLM2-135M-Instruct, a small vision tower and Whisper tiny.en). "
                    "It answers questions about pictures of coloured shapes (colours, shapes, positions, "
                    "counts), typed or spoken, and short general questions."),
        "limits": ("It was trained only on pictures of coloured shapes: shown another picture it should say so, "
                   "and anything else it says about one means nothing. Its general knowledge is that of a very "
                   "small model."),
        "suggestions": [
            {"title": "Ask about a picture", "detail": f"Where is the {circle_colour} circle?",
             "prompt": f"Where is the {circle_colour} circle?", "image": picture_name},
            {"title": "Ask by voice", "detail": f"\u201c{spoken_text}\u201d, spoken", "prompt": "",
             "image": picture_name, "audio": audio_name},
            {"title": "Count", "detail": "How many shapes are there?",
             "prompt": "How many shapes are there?", "image": picture_name},
            {"title": "General question", "detail": "What is the capital of France?",
             "prompt": "What is the capital of France?"},
        ],
    }
    (out / MODEL_CARD_FILE).write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    read_model_card(out)  # fails here, not in the server, if the card is wrong
