"""Durable conversation store: SQLite (WAL, synchronous=FULL, foreign keys) + attachment files.

Layout under the data dir (default `$OMNIPHI_DATA` or `~/.local/share/omniphi`):

    omniphi.db            conversations, messages (content as JSON), attachments (metadata)
    attachments/<id>      the uploaded image/audio bytes

Durability rule: whatever the server acknowledged survives `kill -9` and power loss. Attachment
files are written, fsynced and renamed into place (directory fsynced too) *before* the row that
references them is committed; deleting goes the other way (commit, then unlink), so a crash
leaves at worst an orphan file, swept at the next start — never a row without its file.

One connection guarded by a lock: used from the asyncio thread (via worker threads) and from
the engine thread (which stores the answer even when the client has gone).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

TITLE_CHARS = 48
DEFAULT_TITLE = "New chat"
_ID = re.compile(r"^[0-9a-f]{32}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    auto_title  INTEGER NOT NULL,          -- 1 until renamed or titled from the first question
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,   -- order within a conversation
    id              TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,                       -- JSON list of parts
    finish_reason   TEXT,
    usage           TEXT,                                -- JSON or NULL
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, seq);
CREATE TABLE IF NOT EXISTS attachments (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    mime            TEXT NOT NULL,
    size            INTEGER NOT NULL,
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attachments_by_conversation ON attachments (conversation_id);
"""


class StoreError(Exception):
    """A request that does not fit the stored state (→ 400/404 in the API)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def default_data_dir() -> Path:
    env = os.environ.get("OMNIPHI_DATA")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "omniphi"


def new_id() -> str:
    return uuid.uuid4().hex


def attachment_url(attachment_id: str) -> str:
    return f"/api/attachments/{attachment_id}"


def title_from(text: str) -> str:
    return " ".join(text.split())[:TITLE_CHARS].strip()


def _make_private(path: Path, mode: int) -> None:
    """chmod `path` to `mode` if it exists and is ours (a shared directory given as the data dir is
    left as it is rather than failing the start)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.geteuid() and info.st_mode & 0o777 != mode:
        os.chmod(path, mode)


class Store:
    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.files = self.data_dir / "attachments"
        # Private: conversations are personal. Directories 0700, files 0600, whatever the umask and
        # also for a data dir made by an older version. SQLite creates its -wal and -shm files
        # with the permissions of the database file, so creating that one 0600 covers them.
        db_path = self.data_dir / "omniphi.db"
        for directory in (self.data_dir, self.files):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _make_private(directory, 0o700)
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            _make_private(path, 0o600)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._sweep_orphan_files()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- conversations -------------------------------------------------------------------------
    def create_conversation(self, title: str | None = None) -> dict[str, Any]:
        now = time.time()
        conv_id = new_id()
        auto = not (title and title.strip())
        with self._lock:
            self._db.execute(
                "INSERT INTO conversations (id, title, auto_title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (conv_id, DEFAULT_TITLE if auto else title.strip(), int(auto), now, now),
            )
        return {"id": conv_id, "title": DEFAULT_TITLE if auto else title.strip(), "created_at": now, "updated_at": now}

    def list_conversations(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, title, created_at, updated_at FROM conversations ORDER BY updated_at DESC, rowid DESC"
            ).fetchall()
        return [dict(row) for row in rows]

    def get_conversation(self, conv_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, title, created_at, updated_at FROM conversations WHERE id = ?", (conv_id,)
            ).fetchone()
        return dict(row) if row else None

    def rename_conversation(self, conv_id: str, title: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._db.execute(
                "UPDATE conversations SET title = ?, auto_title = 0, updated_at = ? WHERE id = ?",
                (title.strip(), time.time(), conv_id),
            )
            if cur.rowcount == 0:
                return None
            return self.get_conversation(conv_id)

    def delete_conversation(self, conv_id: str) -> bool:
        with self._lock:
            with self._transaction():
                files = [r["id"] for r in self._db.execute(
                    "SELECT id FROM attachments WHERE conversation_id = ?", (conv_id,))]
                cur = self._db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,))
            deleted = cur.rowcount > 0
        self._unlink(files)  # after the commit: a crash in between leaves only orphans
        return deleted

    # -- messages ------------------------------------------------------------------------------
    def messages(self, conv_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY seq", (conv_id,)
            ).fetchall()
        return [_message(row) for row in rows]

    def begin_turn(
        self,
        conv_id: str,
        *,
        content: list[dict[str, Any]] | None,
        files: Iterable[tuple[str, bytes, str]] = (),
        regenerate: bool = False,
        edit_message_id: str | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Durably record the question of a chat turn; returns (user message, all messages).

        `content` holds stored-shape parts (attachments referenced by id); `files` are the new
        attachments (id, bytes, mime) it references. New question: append. `regenerate`: drop
        the answer(s) after the last user message. `edit_message_id`: replace that user
        message's content and drop everything after it. Attachments no longer referenced by any
        message are deleted."""
        files = list(files)
        for att_id, data, _mime in files:
            self._write_file(att_id, data)
        try:
            with self._lock:
                with self._transaction():
                    conv = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conv_id,)).fetchone()
                    if conv is None:
                        raise StoreError(404, f"No conversation with id '{conv_id}'.")
                    now = time.time()
                    if regenerate:
                        user = self._db.execute(
                            "SELECT * FROM messages WHERE conversation_id = ? AND role = 'user' ORDER BY seq DESC LIMIT 1",
                            (conv_id,)).fetchone()
                        if user is None:
                            raise StoreError(400, "There is no question to answer again.", "regenerate")
                        self._db.execute("DELETE FROM messages WHERE conversation_id = ? AND seq > ?",
                                         (conv_id, user["seq"]))
                        user_id = user["id"]
                    elif edit_message_id is not None:
                        user = self._db.execute(
                            "SELECT * FROM messages WHERE conversation_id = ? AND id = ?",
                            (conv_id, edit_message_id)).fetchone()
                        if user is None or user["role"] != "user":
                            raise StoreError(404 if user is None else 400,
                                             f"No user message with id '{edit_message_id}' in this conversation.",
                                             "edit_message_id")
                        self._db.execute("UPDATE messages SET content = ? WHERE seq = ?",
                                         (json.dumps(content), user["seq"]))
                        self._db.execute("DELETE FROM messages WHERE conversation_id = ? AND seq > ?",
                                         (conv_id, user["seq"]))
                        user_id = user["id"]
                    else:
                        user_id = new_id()
                        self._db.execute(
                            "INSERT INTO messages (id, conversation_id, role, content, created_at) VALUES (?, ?, 'user', ?, ?)",
                            (user_id, conv_id, json.dumps(content), now))
                    for att_id, data, mime in files:
                        self._db.execute(
                            "INSERT INTO attachments (id, conversation_id, mime, size, created_at) VALUES (?, ?, ?, ?, ?)",
                            (att_id, conv_id, mime, len(data), now))
                    title_sql, title_args = "", ()
                    if conv["auto_title"] and content:
                        title = title_from(" ".join(p.get("text", "") for p in content if p.get("type") == "text"))
                        if title:
                            title_sql, title_args = ", title = ?, auto_title = 0", (title,)
                    self._db.execute(f"UPDATE conversations SET updated_at = ?{title_sql} WHERE id = ?",
                                     (now, *title_args, conv_id))
                    orphans = self._drop_unreferenced_attachments(conv_id)
                    messages = self.messages(conv_id)
        except BaseException:
            self._unlink(att_id for att_id, _, _ in files)
            raise
        self._unlink(orphans)
        user_message = next(m for m in messages if m["id"] == user_id)
        return user_message, messages

    def finish_turn(
        self,
        conv_id: str,
        user_message_id: str,
        *,
        text: str,
        transcripts: list[str],
        finish_reason: str,
        usage: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Store the answer (also partial ones) and the transcripts of the question's audio clips.
        Returns the assistant message, or None when the question is gone (the conversation was
        deleted or edited meanwhile)."""
        with self._lock:
            with self._transaction():
                user = self._db.execute(
                    "SELECT m.*, c.auto_title FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                    "WHERE m.id = ? AND m.conversation_id = ?", (user_message_id, conv_id)).fetchone()
                if user is None:
                    return None
                newer = self._db.execute("SELECT 1 FROM messages WHERE conversation_id = ? AND seq > ?",
                                         (conv_id, user["seq"])).fetchone()
                if newer is not None:  # another tab moved the conversation on: do not interleave
                    return None
                now = time.time()
                if transcripts:
                    content = json.loads(user["content"])
                    clips = [p for p in content if p.get("type") == "audio"]
                    for part, transcript in zip(clips, transcripts):
                        part["transcript"] = transcript
                    self._db.execute("UPDATE messages SET content = ? WHERE seq = ?",
                                     (json.dumps(content), user["seq"]))
                    if user["auto_title"]:  # a spoken first question titles the conversation too
                        title = title_from(" ".join(transcripts))
                        if title:
                            self._db.execute("UPDATE conversations SET title = ?, auto_title = 0 WHERE id = ?",
                                             (title, conv_id))
                message_id = new_id()
                self._db.execute(
                    "INSERT INTO messages (id, conversation_id, role, content, finish_reason, usage, created_at) "
                    "VALUES (?, ?, 'assistant', ?, ?, ?, ?)",
                    (message_id, conv_id, json.dumps([{"type": "text", "text": text}]), finish_reason,
                     json.dumps(usage) if usage is not None else None, now))
                self._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conv_id))
                row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _message(row)

    # -- attachments ---------------------------------------------------------------------------
    def attachment(self, att_id: str) -> tuple[Path, str] | None:
        if not _ID.match(att_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT id, mime FROM attachments WHERE id = ?", (att_id,)).fetchone()
        if row is None:
            return None
        return self.files / row["id"], row["mime"]

    def attachment_bytes(self, att_id: str) -> bytes:
        found = self.attachment(att_id)
        if found is None:
            raise StoreError(404, f"No attachment with id '{att_id}'.")
        return found[0].read_bytes()

    # -- internals -----------------------------------------------------------------------------
    def _transaction(self):
        return _Transaction(self._db)

    def _write_file(self, att_id: str, data: bytes) -> None:
        if not _ID.match(att_id):
            raise ValueError("bad attachment id")
        tmp = self.files / f".tmp-{att_id}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.files / att_id)
        # The rename itself must be durable before the row that points at it is committed.
        dir_fd = os.open(self.files, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _unlink(self, att_ids: Iterable[str]) -> None:
        for att_id in att_ids:
            try:
                (self.files / att_id).unlink()
            except FileNotFoundError:
                pass

    def _drop_unreferenced_attachments(self, conv_id: str) -> list[str]:
        referenced = set()
        for row in self._db.execute("SELECT content FROM messages WHERE conversation_id = ?", (conv_id,)):
            referenced.update(p.get("attachment_id") for p in json.loads(row["content"]))
        stale = [r["id"] for r in self._db.execute("SELECT id FROM attachments WHERE conversation_id = ?", (conv_id,))
                 if r["id"] not in referenced]
        for att_id in stale:
            self._db.execute("DELETE FROM attachments WHERE id = ?", (att_id,))
        return stale

    def _sweep_orphan_files(self) -> None:
        with self._lock:
            known = {r["id"] for r in self._db.execute("SELECT id FROM attachments")}
        for path in self.files.iterdir():
            if path.is_file() and path.name not in known:
                path.unlink(missing_ok=True)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False


def _message(row: sqlite3.Row) -> dict[str, Any]:
    content = json.loads(row["content"])
    for part in content:
        if "attachment_id" in part:
            part["url"] = attachment_url(part["attachment_id"])
    return {
        "id": row["id"],
        "role": row["role"],
        "created_at": row["created_at"],
        "content": content,
        "finish_reason": row["finish_reason"],
        "usage": json.loads(row["usage"]) if row["usage"] else None,
    }
