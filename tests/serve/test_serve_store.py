"""The conversation store on its own: persistence, attachments on disk, edit/regenerate, threads."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from omniphi.serve.store import DEFAULT_TITLE, Store, StoreError, default_data_dir, new_id


def text(t):
    return [{"type": "text", "text": t}]


def test_pragmas_and_default_dir(tmp_path, monkeypatch):
    store = Store(tmp_path)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    monkeypatch.setenv("OMNIPHI_DATA", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("OMNIPHI_DATA")
    assert str(default_data_dir()).endswith(".local/share/omniphi")


def test_turns_persist_across_reopen(tmp_path):
    store = Store(tmp_path)
    conv = store.create_conversation()
    assert conv["title"] == DEFAULT_TITLE
    att = new_id()
    user, _ = store.begin_turn(conv["id"], content=text("  What is   in this picture? " + "x" * 60) +
                               [{"type": "image", "attachment_id": att, "mime": "image/png"}],
                               files=[(att, b"PNGDATA", "image/png")])
    answer = store.finish_turn(conv["id"], user["id"], text="A cat.", transcripts=[], finish_reason="stop",
                               usage={"prompt_tokens": 5, "completion_tokens": 2, "seconds": 0.1,
                                      "tokens_per_second": 20.0})
    store.close()

    store = Store(tmp_path)
    (again,) = store.list_conversations()
    assert again["title"] == ("What is in this picture? " + "x" * 60)[:48].strip()
    messages = store.messages(conv["id"])
    assert [m["id"] for m in messages] == [user["id"], answer["id"]]
    assert messages[0]["content"][1] == {"type": "image", "attachment_id": att, "mime": "image/png",
                                         "url": f"/api/attachments/{att}"}
    assert messages[1]["usage"]["completion_tokens"] == 2 and messages[1]["finish_reason"] == "stop"
    path, mime = store.attachment(att)
    assert path.read_bytes() == b"PNGDATA" and mime == "image/png"


def test_delete_removes_rows_and_files(tmp_path):
    store = Store(tmp_path)
    conv = store.create_conversation("kept title")
    att = new_id()
    store.begin_turn(conv["id"], content=[{"type": "audio", "attachment_id": att, "mime": "audio/wav",
                                           "transcript": None}], files=[(att, b"RIFF", "audio/wav")])
    path, _ = store.attachment(att)
    assert store.delete_conversation(conv["id"])
    assert not path.exists() and store.attachment(att) is None
    assert store.messages(conv["id"]) == [] and store.get_conversation(conv["id"]) is None
    assert not store.delete_conversation(conv["id"])
    raw = sqlite3.connect(tmp_path / "omniphi.db")
    assert raw.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # cascaded


def test_orphan_files_are_swept_at_start(tmp_path):
    store = Store(tmp_path)
    (store.files / new_id()).write_bytes(b"left by a crash between write and commit")
    (store.files / f".tmp-{new_id()}").write_bytes(b"half written")
    store.close()
    assert list(Store(tmp_path).files.iterdir()) == []


def test_failed_turn_leaves_no_file(tmp_path):
    store = Store(tmp_path)
    att = new_id()
    with pytest.raises(StoreError) as info:
        store.begin_turn("nope", content=text("x"), files=[(att, b"data", "image/png")])
    assert info.value.status == 404
    assert list(store.files.iterdir()) == []


def test_edit_and_regenerate(tmp_path):
    store = Store(tmp_path)
    conv = store.create_conversation()
    with pytest.raises(StoreError):
        store.begin_turn(conv["id"], content=None, regenerate=True)
    old_att = new_id()
    q1, _ = store.begin_turn(conv["id"], content=text("first") + [
        {"type": "image", "attachment_id": old_att, "mime": "image/png"}], files=[(old_att, b"1", "image/png")])
    a1 = store.finish_turn(conv["id"], q1["id"], text="one", transcripts=[], finish_reason="stop", usage=None)
    q2, _ = store.begin_turn(conv["id"], content=text("second"))
    store.finish_turn(conv["id"], q2["id"], text="two", transcripts=[], finish_reason="stop", usage=None)

    again, messages = store.begin_turn(conv["id"], content=None, regenerate=True)
    assert again["id"] == q2["id"] and [m["id"] for m in messages] == [q1["id"], a1["id"], q2["id"]]

    with pytest.raises(StoreError) as info:
        store.begin_turn(conv["id"], content=text("x"), edit_message_id=a1["id"])
    assert info.value.status == 400
    with pytest.raises(StoreError) as info:
        store.begin_turn(conv["id"], content=text("x"), edit_message_id="unknown")
    assert info.value.status == 404

    old_path, _ = store.attachment(old_att)
    edited, messages = store.begin_turn(conv["id"], content=text("first, edited"), edit_message_id=q1["id"])
    assert edited["id"] == q1["id"] and edited["content"] == text("first, edited")
    assert [m["id"] for m in messages] == [q1["id"]]
    assert store.attachment(old_att) is None and not old_path.exists()  # no longer referenced
    assert store.get_conversation(conv["id"])["title"] == "first"  # titled once, by the first question


def test_answer_for_a_vanished_question_is_not_stored(tmp_path):
    store = Store(tmp_path)
    conv = store.create_conversation()
    q, _ = store.begin_turn(conv["id"], content=text("q"))
    store.begin_turn(conv["id"], content=text("q, edited elsewhere"), edit_message_id=q["id"])
    q2, _ = store.begin_turn(conv["id"], content=text("newer"))
    assert store.finish_turn(conv["id"], q["id"], text="late", transcripts=[], finish_reason="stop",
                             usage=None) is None
    store.delete_conversation(conv["id"])
    assert store.finish_turn(conv["id"], q2["id"], text="late", transcripts=[], finish_reason="stop",
                             usage=None) is None


def test_transcripts_fill_the_audio_parts_and_title_a_spoken_question(tmp_path):
    store = Store(tmp_path)
    conv = store.create_conversation()
    a, b = new_id(), new_id()
    q, _ = store.begin_turn(conv["id"], content=[
        {"type": "audio", "attachment_id": a, "mime": "audio/webm", "transcript": None},
        {"type": "audio", "attachment_id": b, "mime": "audio/webm", "transcript": None}],
        files=[(a, b"1", "audio/webm"), (b, b"2", "audio/webm")])
    store.finish_turn(conv["id"], q["id"], text="Paris.", transcripts=["What is the capital", "of France?"],
                      finish_reason="stop", usage=None)
    user = store.messages(conv["id"])[0]
    assert [p["transcript"] for p in user["content"]] == ["What is the capital", "of France?"]
    assert store.get_conversation(conv["id"])["title"] == "What is the capital of France?"


def test_renamed_conversations_are_not_retitled(tmp_path):
    store = Store(tmp_path)
    conv = store.create_conversation()
    store.rename_conversation(conv["id"], "Mine")
    store.begin_turn(conv["id"], content=text("a question"))
    assert store.get_conversation(conv["id"])["title"] == "Mine"
    assert store.rename_conversation("nope", "x") is None


def test_concurrent_writers(tmp_path):
    store = Store(tmp_path)
    conv = store.create_conversation()
    errors = []

    def worker(i):
        try:
            for j in range(10):
                q, _ = store.begin_turn(conv["id"], content=text(f"{i}-{j}"))
                store.finish_turn(conv["id"], q["id"], text="ok", transcripts=[], finish_reason="stop", usage=None)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.messages(conv["id"])) >= 40  # every question stored (an answer may lose a race)
