"""The generation history: an index of the pictures in outputs/ in an embedded SQLite database
(`history.sqlite3` in the data dir; WAL, one writer, busy_timeout), with full-text search over prompts and
infotexts (FTS5).

It is an index, never the only copy: a picture's file (with its infotext) is written first, then its row in one
transaction. `reconcile()` (at start, in the background) marks rows whose file is gone as missing and imports
pictures that have no row from their own infotext, so a first start indexes an existing A1111 outputs folder and a
deleted database is rebuilt from the files; a database file that is not one is moved aside and rebuilt.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".avif")
# deleted pictures wait in .trash, restorable; init-images holds img2img's inputs (setting save_init_img), not results
SKIPPED_DIRS = {".trash", "init-images"}
FIELDS = ("path", "size", "width", "height", "seed", "model", "model_hash", "sampler", "steps", "cfg", "prompt",
          "negative_prompt", "infotext", "created", "kind", "sha256")
EDITABLE = {"starred": bool, "rating": int, "board": str}

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER, width INTEGER, height INTEGER,
    seed INTEGER, model TEXT, model_hash TEXT, sampler TEXT, steps INTEGER, cfg REAL,
    prompt TEXT NOT NULL DEFAULT '', negative_prompt TEXT NOT NULL DEFAULT '', infotext TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, kind TEXT NOT NULL DEFAULT '',
    starred INTEGER NOT NULL DEFAULT 0, rating INTEGER NOT NULL DEFAULT 0, board TEXT NOT NULL DEFAULT '',
    deleted INTEGER NOT NULL DEFAULT 0, missing INTEGER NOT NULL DEFAULT 0, sha256 TEXT
);
CREATE INDEX IF NOT EXISTS images_model ON images(model);
CREATE INDEX IF NOT EXISTS images_board ON images(board);
CREATE VIRTUAL TABLE IF NOT EXISTS images_fts USING fts5(
    prompt, negative_prompt, infotext, content='images', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS images_ai AFTER INSERT ON images BEGIN
    INSERT INTO images_fts(rowid, prompt, negative_prompt, infotext)
    VALUES (new.id, new.prompt, new.negative_prompt, new.infotext);
END;
CREATE TRIGGER IF NOT EXISTS images_ad AFTER DELETE ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative_prompt, infotext)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt, old.infotext);
END;
CREATE TRIGGER IF NOT EXISTS images_au AFTER UPDATE OF prompt, negative_prompt, infotext ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative_prompt, infotext)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt, old.infotext);
    INSERT INTO images_fts(rowid, prompt, negative_prompt, infotext)
    VALUES (new.id, new.prompt, new.negative_prompt, new.infotext);
END;
"""


class HistoryError(ValueError):
    """A bad filter or value (the API answers 422)."""


ORDERS = ("newest", "oldest", "rating")
_ID_BITS = 40  # a "rating" page's cursor packs (rating, id) into one number: rating << 40 | id


@dataclass(frozen=True)
class Query:
    """What the History view and `GET /sdapi/v1/history` filter by; `cursor` is where the previous page ended
    (keyset pagination, in `order`: newest or oldest first, or best rated first and newest among equals)."""

    q: str = ""
    model: str = ""
    sampler: str = ""
    starred: bool | None = None
    board: str | None = None
    min_width: int = 0
    min_height: int = 0
    since: float | None = None
    until: float | None = None
    include_deleted: bool = False
    trash: bool = False  # only the deleted pictures (the trash), to restore them
    cursor: int | None = None
    limit: int = 50
    order: str = "newest"


def _fts_phrase(text: str) -> str:
    """The user's words as an FTS5 query: each word a quoted term (so `red circle` finds both words in any order,
    and punctuation or FTS5 operators typed by a user are never syntax)."""
    words = [w for w in text.replace('"', " ").split() if w]
    return " ".join(f'"{w}"' for w in words)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def picture_row(path: Path, infotext: str | None, kind: str = "") -> dict[str, Any]:
    """The row for a picture file from its infotext (A1111's format, as written by A1111 or by us)."""
    from modules import infotext as infotext_mod

    stat = path.stat()
    row: dict[str, Any] = {"path": str(path), "size": stat.st_size, "created": stat.st_mtime, "kind": kind,
                           "infotext": infotext or "", "prompt": "", "negative_prompt": "",
                           "sha256": file_sha256(path)}
    if infotext:
        params = infotext_mod.parse_generation_parameters(infotext, fill_defaults=False)
        row["prompt"] = str(params.get("Prompt", "") or "")
        row["negative_prompt"] = str(params.get("Negative prompt", "") or "")
        for field, key, conv in (("seed", "Seed", int), ("steps", "Steps", int), ("cfg", "CFG scale", float),
                                 ("sampler", "Sampler", str), ("model", "Model", str),
                                 ("model_hash", "Model hash", str)):
            try:
                row[field] = conv(params[key]) if key in params else None
            except (TypeError, ValueError):
                row[field] = None
        try:
            row["width"], row["height"] = int(params["Size-1"]), int(params["Size-2"])
        except (KeyError, TypeError, ValueError):
            pass
    if not row.get("width"):
        try:
            from PIL import Image

            with Image.open(path) as im:
                row["width"], row["height"] = im.size
        except OSError:
            pass
    return row


class HistoryStore:
    """The database: `add` after a picture is written, `search`, `get`, `update`, `delete` (to a trash folder)
    and `restore`, `reconcile` against the outputs folder."""

    def __init__(self, path: Path, outputs_dir: Path):
        self.path, self.outputs_dir = Path(path), Path(outputs_dir)
        self._lock = threading.RLock()  # one writer; readers use their own connections (WAL)
        self._local = threading.local()
        self._open()

    # -- connections -------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
            conn.executescript(SCHEMA)
            _migrate(conn)
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
        except sqlite3.DatabaseError as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                part = Path(str(self.path) + suffix)
                if part.exists():
                    os.replace(part, Path(str(aside) + suffix))
            log.error("history database %s could not be read (%s); moved it to %s and rebuilding it from the "
                      "pictures in %s", self.path, e, aside.name, self.outputs_dir)
            conn = self._connect()
            conn.executescript(SCHEMA)
            _migrate(conn)
        self._writer = conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        with self._lock:
            self._writer.close()

    # -- writing -----------------------------------------------------------------------------------------------

    def add(self, path: Path, infotext: str | None, kind: str = "") -> int | None:
        """Index a picture that has just been written (its row in one transaction); None if it is gone."""
        try:
            row = picture_row(Path(path), infotext, kind)
        except OSError:
            return None
        return self._insert([row])[0]

    def _insert(self, rows: list[dict]) -> list[int]:
        ids = []
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    values = [row.get(f) for f in FIELDS]
                    cur = conn.execute(
                        f"INSERT INTO images ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))}) "
                        "ON CONFLICT(path) DO UPDATE SET missing = 0, deleted = 0 RETURNING id", values)
                    ids.append(cur.fetchone()[0])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return ids

    def update(self, image_id: int, changes: dict[str, Any]) -> dict:
        """Star, rate or file a picture on a board."""
        values = _checked_changes(changes)
        self.get(image_id)  # 404 first
        if values:
            with self._lock:
                self._writer.execute(f"UPDATE images SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                                     [*values.values(), image_id])
        return self.get(image_id)

    def update_many(self, image_ids: list[int], changes: dict[str, Any]) -> int:
        """The same change for many pictures in one transaction (the History tab's "Move selected to board");
        ids that are not in the history are skipped. Returns how many rows changed."""
        values = _checked_changes(changes)
        ids = [i for i in image_ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**63]
        if not values or not ids:
            return 0
        changed = 0
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    changed += conn.execute(
                        f"UPDATE images SET {', '.join(f'{k} = ?' for k in values)} WHERE id IN "
                        f"({', '.join('?' * len(chunk))})", [*values.values(), *chunk]).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return changed

    def delete(self, image_id: int) -> dict:
        """Move the picture to the trash folder (outputs/.trash/…, restorable) and mark its row deleted."""
        row = self.get(image_id)
        src = Path(row["path"])
        trash = self.trash_path(src)
        if src.exists():
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, trash)
            _move_parameters_file(src, trash)
        with self._lock:
            self._writer.execute("UPDATE images SET deleted = 1 WHERE id = ?", (image_id,))
        return self.get(image_id)

    def restore(self, image_id: int) -> dict:
        """Bring a deleted picture back from the trash folder to where it was (missing if its file is gone)."""
        row = self.get(image_id)
        src, trash = Path(row["path"]), self.trash_path(Path(row["path"]))
        if trash.exists() and not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            os.replace(trash, src)
            _move_parameters_file(trash, src)
        with self._lock:
            self._writer.execute("UPDATE images SET deleted = 0, missing = ? WHERE id = ?",
                                 (0 if src.exists() else 1, image_id))
        return self.get(image_id)

    def file_path(self, row: dict) -> Path:
        """Where a row's picture is now: in the trash folder while it is deleted."""
        path = Path(row["path"])
        return self.trash_path(path) if row["deleted"] else path

    def trash_path(self, path: Path) -> Path:
        try:
            rel = path.resolve().relative_to(self.outputs_dir.resolve())
        except ValueError:
            rel = Path(path.name)
        return self.outputs_dir / ".trash" / rel

    # -- reading -----------------------------------------------------------------------------------------------

    def get(self, image_id: int) -> dict:
        if not isinstance(image_id, int) or not 0 <= image_id < 2**63:
            raise KeyError(image_id)
        row = self._reader().execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return _public(row)

    def count(self) -> int:
        return self._reader().execute("SELECT count(*) FROM images WHERE deleted = 0 AND missing = 0").fetchone()[0]

    def search(self, query: Query) -> tuple[list[dict], int | None]:
        """A page of pictures in the query's order, and the cursor for the next page (None at the end)."""
        if not 1 <= query.limit <= 500:
            raise HistoryError("limit: from 1 to 500")
        if query.order not in ORDERS:
            raise HistoryError(f"order: one of {', '.join(ORDERS)}")
        for name in ("cursor", "min_width", "min_height"):
            value = getattr(query, name)
            if value is not None and not 0 <= value < 2**62:
                raise HistoryError(f"{name}: a whole number from 0")
        for name in ("since", "until"):
            value = getattr(query, name)
            if value is not None and not -1e12 < value < 1e12:
                raise HistoryError(f"{name}: a date")
        where, args = [], []
        if query.trash:
            where.append("deleted = 1")
        elif not query.include_deleted:
            where.append("deleted = 0 AND missing = 0")
        if query.q.strip():
            phrase = _fts_phrase(query.q)
            if phrase:
                where.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
                args.append(phrase)
        for column, value in (("model", query.model), ("sampler", query.sampler)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if query.starred is not None:
            where.append("starred = ?")
            args.append(int(query.starred))
        if query.board is not None:
            where.append("board = ?")
            args.append(query.board)
        if query.min_width:
            where.append("width >= ?")
            args.append(query.min_width)
        if query.min_height:
            where.append("height >= ?")
            args.append(query.min_height)
        if query.since is not None:
            where.append("created >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("created < ?")
            args.append(query.until)
        if query.cursor is not None:
            if query.order == "rating":
                rating, last = query.cursor >> _ID_BITS, query.cursor & ((1 << _ID_BITS) - 1)
                where.append("(rating < ? OR (rating = ? AND id < ?))")
                args += [rating, rating, last]
            else:
                where.append("id > ?" if query.order == "oldest" else "id < ?")
                args.append(query.cursor)
        order = {"newest": "id DESC", "oldest": "id ASC", "rating": "rating DESC, id DESC"}[query.order]
        sql = "SELECT * FROM images" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order} LIMIT ?"
        rows = self._reader().execute(sql, [*args, query.limit + 1]).fetchall()
        items = [_public(r) for r in rows[:query.limit]]
        if len(rows) <= query.limit:
            return items, None
        last = items[-1]
        return items, (last["rating"] << _ID_BITS | last["id"]) if query.order == "rating" else last["id"]

    # -- the files ---------------------------------------------------------------------------------------------

    def pictures_on_disk(self) -> Iterable[Path]:
        if not self.outputs_dir.is_dir():
            return
        for root, dirs, files in os.walk(self.outputs_dir):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
            for name in files:  # grids are not indexed (a job's pictures are; A1111 keeps grids apart too)
                if name.lower().endswith(PICTURE_SUFFIXES) and not name.startswith((".", "grid-")):
                    yield Path(root) / name

    def reconcile(self, batch: int = 500) -> dict[str, int]:
        """Rows whose file is gone → missing (and back when it returns); a picture moved to another folder keeps its
        row (star, rating, board), found by its sha256; other pictures without a row → imported from their
        infotext; rows from before the sha256 column get theirs. Returns counts."""
        from PIL import Image

        from modules.images import read_infotext

        known = {r["path"]: (r["id"], r["missing"], r["deleted"]) for r in
                 self._reader().execute("SELECT id, path, missing, deleted FROM images")}
        on_disk = {str(p) for p in self.pictures_on_disk()}
        gone = [v[0] for k, v in known.items() if k not in on_disk and not v[1] and not v[2]]
        back = [v[0] for k, v in known.items() if k in on_disk and v[1]]
        with self._lock:
            for ids, flag in ((gone, 1), (back, 0)):
                for i in range(0, len(ids), batch):
                    chunk = ids[i:i + batch]
                    self._writer.execute(f"UPDATE images SET missing = {flag} WHERE id IN "
                                         f"({', '.join('?' * len(chunk))})", chunk)
        self._fill_hashes(batch)
        lost = {r["sha256"]: r["id"] for r in self._reader().execute(
            "SELECT id, sha256 FROM images WHERE missing = 1 AND sha256 IS NOT NULL")}
        new, rows = sorted(p for p in on_disk if p not in known), []
        imported, moved = 0, set()
        for name in new:
            path = Path(name)
            try:
                with Image.open(path) as im:
                    text = read_infotext(im)
                row = picture_row(path, text)
            except (OSError, ValueError, SyntaxError) as e:  # not a picture after all: skipped, said once
                log.warning("history: %s is not a readable picture (%s); not indexed", path, e)
                continue
            if row["sha256"] in lost:  # the same picture somewhere else: its row follows it
                image_id = lost.pop(row["sha256"])
                with self._lock:
                    self._writer.execute("UPDATE images SET path = ?, missing = 0 WHERE id = ?",
                                         (row["path"], image_id))
                moved.add(image_id)
                continue
            rows.append(row)
            if len(rows) >= batch:
                imported += len(self._insert(rows))
                rows = []
        if rows:
            imported += len(self._insert(rows))
        missing = len(set(gone) - moved)
        if imported or missing or moved:
            log.info("history: %d picture(s) indexed from %s, %d moved, %d marked missing", imported,
                     self.outputs_dir, len(moved), missing)
        return {"imported": imported, "missing": missing, "returned": len(back), "moved": len(moved)}

    def _fill_hashes(self, batch: int) -> None:
        """The sha256 of rows indexed before the column existed (files still there)."""
        todo = self._reader().execute(
            "SELECT id, path, deleted FROM images WHERE sha256 IS NULL AND missing = 0").fetchall()
        for i in range(0, len(todo), batch):
            values = []
            for row in todo[i:i + batch]:
                try:
                    values.append((file_sha256(self.file_path(dict(row))), row["id"]))
                except OSError:
                    continue
            with self._lock:
                self._writer.executemany("UPDATE images SET sha256 = ? WHERE id = ?", values)

    def integrity(self) -> str:
        return self._reader().execute("PRAGMA integrity_check").fetchone()[0]


def _migrate(conn: sqlite3.Connection) -> None:
    """Columns added since a database was made (its rows get their values at the next reconcile)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(images)")}
    if "sha256" not in columns:
        conn.execute("ALTER TABLE images ADD COLUMN sha256 TEXT")
    conn.execute("CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256)")


def _checked_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The editable fields of `changes` as stored, or a HistoryError that says which value is wrong and why."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise HistoryError(f"cannot change {', '.join(sorted(unknown))}; editable: {', '.join(EDITABLE)}")
    values = {}
    for key, value in changes.items():
        if key == "rating" and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 5):
            raise HistoryError("rating: a whole number from 0 to 5")
        if key == "starred" and not isinstance(value, bool):
            raise HistoryError("starred: true or false")
        if key == "board" and (not isinstance(value, str) or len(value) > 200):
            raise HistoryError("board: a name of at most 200 characters")
        values[key] = int(value) if key == "starred" else value
    return values


def request_fields(infotext: str) -> dict[str, Any]:
    """The A1111 txt2img request fields (and override_settings) a picture's infotext gives: posting them recreates
    the picture (`GET /sdapi/v1/history/{id}/params`, the History tab's Rerun)."""
    from modules import infotext as infotext_mod

    parsed = infotext_mod.parse_generation_parameters(infotext or "")
    fields = infotext_mod.infotext_to_request_fields(parsed)
    overrides = infotext_mod.infotext_to_override_settings(parsed)
    if overrides:
        fields["override_settings"] = overrides
    return fields


def _public(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["starred"] = bool(out["starred"])
    out["deleted"] = bool(out["deleted"])
    out["missing"] = bool(out["missing"])
    return out


def _move_parameters_file(picture: Path, to: Path) -> None:
    """The picture's `NAME.txt` (the setting save_txt) goes with it, as A1111's delete takes it too; one already at
    the destination is left alone."""
    text, dest = picture.with_suffix(".txt"), to.with_suffix(".txt")
    if text.is_file() and not dest.exists():
        os.replace(text, dest)
