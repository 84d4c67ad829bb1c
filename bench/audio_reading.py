"""What the LLM reads of a spoken question on the native path: each audio token the model's audio
projector writes, read as its nearest input embedding, repeats merged and blanks (a lone space)
dropped, as the audio_words stage spells (omniphi/train/audio_words.py). No LLM runs.

Why: an answer in native mode can only be as right as the words the projector writes; a wrong
answer ("What is the capital of England?" → "The capital of India is New Delhi.") may come from the
projector writing another word or from the LLM. This tells which, for any question file, in a minute
and without a build's eval. The questions are spoken by `omniphi data shapes`'s default voices
(both engines), one voice per question drawn by --seed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/audio_reading.py starter docs/eval/general-qa.jsonl

Prints each question and its reading, then one JSON line per file: {"file", "questions", "wer",
"whisper_wer"}: the corpus word error rates (Whisper's English normaliser) of the readings and of
Whisper's transcripts of the same clips (the transcribe path's text) against the questions.
"""

from __future__ import annotations

import argparse
import json

import torch

from omniphi.data.tts import make_speaker
from omniphi.eval.metrics import corpus_wer
from omniphi.runtime.loading import LoadedModel, load_weights
from omniphi.train.audio_words import WordTable, read_clips, whisper_frames
from omniphi.train.recipe import AudioWordsSection


def load_reader(model_spec: str) -> LoadedModel:
    """The model, refused in one line when it has no native audio path to read."""
    loaded = load_weights(model_spec)
    if getattr(loaded.model, "audio_projector", None) is None:
        raise SystemExit(f"{model_spec} has no audio projector: it has no native audio path")
    return loaded


@torch.no_grad()
def readings(loaded: LoadedModel, questions: list[str], seed: int) -> tuple[list[str], list[str] | None]:
    """(the projector's reading of each spoken question, Whisper's transcript of the same clip or
    None when the model has no speech recogniser)."""
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    (blank,) = tokenizer(AudioWordsSection.blank, add_special_tokens=False)["input_ids"]  # the stage's blank
    speaker = make_speaker(seed=seed)
    clips = [speaker.speak(question, key=f"{seed}:{question}") for question in questions]
    frames = whisper_frames(model, loaded.processor, clips, torch.device("cpu"))
    out = [tokenizer.decode(said).strip()
           for _, said in read_clips(model.audio_projector, WordTable(model.language_model), frames, blank)]
    transcripts = None if loaded.transcriber is None else [loaded.transcriber.transcribe(clip) for clip in clips]
    return out, transcripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a preset or model directory with an audio projector")
    parser.add_argument("files", nargs="+", help="JSON-lines files with a \"question\" per line (omniphi eval's qa format) or a "
                        "\"text\" (an ASR manifest's transcript; its clip is not used)")
    parser.add_argument("--seed", type=int, default=0, help="draws each question's voice")
    parser.add_argument("--limit", type=int, default=None, help="the first N questions of each file")
    args = parser.parse_args()
    loaded = load_reader(args.model)
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        questions = [row["question"] if "question" in row else row["text"] for row in rows][: args.limit]
        read, transcripts = readings(loaded, questions, args.seed)
        for question, reading in zip(questions, read):
            print(f"{question}  →  {reading}")
        summary = {"file": path, "questions": len(questions), "wer": round(corpus_wer(zip(questions, read)), 4)}
        if transcripts is not None:
            summary["whisper_wer"] = round(corpus_wer(zip(questions, transcripts)), 4)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
