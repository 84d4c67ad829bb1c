import json
import pickle

import pytest

from omniphi.data.llava import DataFileError
from omniphi.data.skipping import Skipped
from omniphi.data.text import TextDataset


def all_texts(ds):
    return [ds[i]["text"] for i in range(len(ds))]


def test_blank_line_documents(tmp_path):
    p = tmp_path / "stories.txt"
    p.write_text("Once upon a time\nthere was a cat.\n\n\n  \nThe end.\n\nLast one without newline")
    ds = TextDataset(p)
    assert all_texts(ds) == ["Once upon a time\nthere was a cat.", "The end.", "Last one without newline"]
    assert [ds[i]["id"] for i in range(3)] == ["stories:0", "stories:1", "stories:2"]


def test_line_documents_and_separator(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_text("first doc\n\nsecond doc\nthird doc\n")
    assert all_texts(TextDataset(p, split="line")) == ["first doc", "second doc", "third doc"]
    t = tmp_path / "tiny.txt"  # TinyStoriesV2 style
    t.write_text("Story one.\n\nStill one.\n<|endoftext|>\nStory two.\n<|endoftext|>\n")
    assert all_texts(TextDataset(t, separator="<|endoftext|>")) == ["Story one.\n\nStill one.", "Story two."]


def test_jsonl_and_multiple_files(tmp_path):
    j = tmp_path / "gen.jsonl"
    j.write_text(json.dumps({"text": "Héllo wörld", "prompt": "p"}) + "\n\n{oops\n"
                 + json.dumps({"text": "B", "id": "b7"}) + "\n" + json.dumps({"title": "no text"}) + "\n")
    t = tmp_path / "a.txt"
    t.write_text("A doc\n")
    ds = TextDataset([t, j])
    assert len(ds) == 5
    assert ds[0] == {"id": "a:0", "text": "A doc"}
    assert ds[1] == {"id": "gen:0", "text": "Héllo wörld"}
    assert isinstance(ds[2], Skipped) and ds[2].reason == "bad_record"
    assert ds[3] == {"id": "b7", "text": "B"}
    assert isinstance(ds[4], Skipped)
    with pytest.raises(IndexError):
        ds[5]


def test_pickles_without_file_descriptors(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("one\n\ntwo\n")
    ds = TextDataset(p)
    assert ds[1]["text"] == "two"  # opens a descriptor
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._fds == {} and clone[0]["text"] == "one"


def test_errors(tmp_path):
    with pytest.raises(DataFileError, match="not found"):
        TextDataset(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataFileError, match=".txt or .jsonl"):
        TextDataset(tmp_path / "x.csv")
