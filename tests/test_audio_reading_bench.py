"""bench/audio_reading.py: what the LLM reads of a spoken question on the native path."""

import shutil

import pytest
import torch

needs_tts = pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None,
                               reason="needs flite and espeak-ng")


class _Writes(torch.nn.Module):
    """An audio projector that writes the embeddings of `ids`, each followed by the blank, then blanks."""

    def __init__(self, embeddings: torch.Tensor, ids: list[int], blank: int):
        super().__init__()
        self.embeddings, self.ids, self.blank = embeddings, ids, blank

    def forward(self, frames):
        path = [token for i in self.ids for token in (i, self.blank)]
        length = frames.shape[1]
        assert length >= len(path), "the clip is too short for the test's path"
        path += [self.blank] * (length - len(path))
        return self.embeddings[torch.tensor(path)][None]


@needs_tts
def test_reading_is_the_words_whose_embeddings_the_projector_writes():
    import bench.audio_reading as reading
    from omniphi.runtime.loading import load_weights
    from omniphi.train.recipe import AudioWordsSection

    loaded = load_weights("tiny")
    tokenizer = loaded.processor.tokenizer
    (blank,) = tokenizer(AudioWordsSection.blank, add_special_tokens=False)["input_ids"]
    ids = tokenizer("red circle", add_special_tokens=False)["input_ids"]
    loaded.model.audio_projector = _Writes(loaded.model.language_model.get_input_embeddings().weight.detach(), ids, blank)
    read, transcripts = reading.readings(loaded, ["Where is the big red circle in this picture?"], seed=0)
    assert read == [tokenizer.decode(ids).strip()]
    assert transcripts is None or len(transcripts) == 1


def test_a_model_without_an_audio_projector_is_refused(monkeypatch):
    import bench.audio_reading as reading
    from omniphi.runtime.loading import load_weights

    loaded = load_weights("tiny")
    loaded.model.audio_projector = None
    monkeypatch.setattr(reading, "load_weights", lambda spec: loaded)
    with pytest.raises(SystemExit, match="no native audio path"):
        reading.load_reader("tiny")
