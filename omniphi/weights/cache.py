"""On-disk cache for weights that omniphi converts itself (GGUF, CTranslate2 → safetensors).

Conversions are slow (tens of seconds) and loading safetensors is fast, so every converter
builds once and loads the result thereafter. The one rule that matters: a cache entry is
either complete or absent. A build writes into a temporary directory next to the final one
(same filesystem, so ``os.replace`` is an atomic rename) and only a finished build gets the
final name. An interrupted conversion leaves at most a ``.tmp-*`` directory, which is never
mistaken for a cache entry and is cleaned up by the next build.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

STAMP_FILE = "omniphi_cache.json"
# Said once per process before the first conversion: the first start is slow, and says why.
FIRST_START_NOTICE = "first start: converting the packaged weights (once, ~1 min)…"
_first_start_noticed = False


def _notice(line: str) -> None:
    global _first_start_noticed
    if not _first_start_noticed:
        print(FIRST_START_NOTICE, file=sys.stderr, flush=True)
        _first_start_noticed = True
    print(line, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """``$OMNIPHI_CACHE`` or ``~/.cache/omniphi``, created on demand."""
    env = os.environ.get("OMNIPHI_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "omniphi"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads((path / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def _clean_stale_tmp(parent: Path, name: str) -> None:
    # Leftovers of builds that were killed. Another process may be building right now, so only
    # remove directories old enough that they cannot belong to a live build.
    for p in parent.glob(f".{name}.tmp-*"):
        try:
            if time.time() - p.stat().st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def cached_build(
    name: str, build: Callable[[Path], None], stamp: dict[str, Any] | None = None, *, what: str | None = None
) -> Path:
    """Return ``cache_dir()/name``, running ``build(tmp_dir)`` first if it is missing or stale.

    ``build`` must write the whole entry (e.g. ``model.save_pretrained(tmp_dir)``) into the
    directory it is given. ``stamp`` describes the source (file size, converter version…); an
    entry whose stamp differs is rebuilt, so upgrading the source package or the converter never
    serves weights converted from something else. If two processes build at once, the first
    rename wins and the other discards its copy.

    A build is announced on stderr (``what``: e.g. "Whisper tiny.en from CTranslate2 (~10 s)"),
    after the first-start notice, and its end with the time it took and where the result lies.
    """
    root = cache_dir()
    final = root / name
    want = {"name": name, **(stamp or {})}
    if final.is_dir() and _read_stamp(final) == want:
        return final

    _clean_stale_tmp(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    # mkdtemp makes a private (0700) directory; give the entry a normal directory's mode.
    tmp.chmod(0o755)
    started = time.perf_counter()
    _notice(f"  {what or name}…")
    try:
        build(tmp)
        # The stamp is written last: it is what marks the directory as a finished build.
        (tmp / STAMP_FILE).write_text(json.dumps(want, indent=1, sort_keys=True))
        if final.is_dir() and _read_stamp(final) == want:
            # Another process finished the same build while this one ran: keep theirs.
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        if final.exists():
            # Stale (or foreign) entry: move it aside first, because os.replace cannot replace a
            # non-empty directory. Readers in the gap just see "missing" and rebuild.
            trash = root / f".{name}.tmp-old-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(final, trash)
            except FileNotFoundError:
                trash = None
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            # Lost a race with a concurrent build of the same entry: use the winner's copy.
            if final.is_dir() and _read_stamp(final) == want:
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"  done in {time.perf_counter() - started:.0f} s (cached in {final})", file=sys.stderr, flush=True)
    return final
