"""The run store: SQLite in WAL mode, so the dashboard can read while a trainer writes.

Tables: ``runs`` (config, dataset, model, DP parameters, accountant, final epsilon and
delta, accuracy, status, timestamps, the privacy statement), ``steps`` (per-step
epsilon, loss, accuracy), ``audits`` (kind, parameters and results as JSON),
``artifacts`` (paths of checkpoints and arrays) and ``store_info`` (the store's unique
id). ``PRAGMA user_version`` holds the schema version and :data:`MIGRATIONS` brings an
older store up to date, inside one ``BEGIN IMMEDIATE`` transaction, so that processes
creating the same store at once cannot interleave.

The store is the source of truth for privacy accounting: ``runs.spent_steps`` counts
every DP-SGD step a run has started, is written before the step is taken and never
decreases, so a resumed run rebuilds its accountant from it. A running row records its
owner (pid, host) and a heartbeat; a row whose owner is gone reads as ``interrupted``.

A file that is not SQLite, a SQLite database of another application, or a store that
fails SQLite's integrity check is refused with one clear error and left untouched.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from dpplat.owners import STALE_AFTER, Heartbeat, live_status  # noqa: F401  (STALE_AFTER: part of the store's API)
from dpplat.store_schema import MIGRATIONS

APPLICATION_ID = 0x44505054  # "DPPT": marks a SQLite file as a dpplat store

SCHEMA_VERSION = len(MIGRATIONS)

RUN_FIELDS = (
    "name", "dataset", "model", "config", "noise_multiplier", "max_grad_norm", "clipping", "sample_rate",
    "batch_size", "dataset_size", "accountant", "target_epsilon", "delta", "epsilon", "steps", "accuracy",
    "status", "message", "statement", "finished_at",
)  # spent_steps and checkpoint_step change only through charge_step and record_checkpoint


class StoreError(RuntimeError):
    """The store file cannot be used; the message says why and what to do. The file is left as it was."""


def default_store_path() -> Path:
    return Path(os.environ.get("DPPLAT_STORE", "dpplat.db"))


@dataclass(frozen=True)
class Run:
    id: int
    dataset: str
    model: str
    config: dict
    status: str
    epsilon: float | None
    delta: float | None
    accuracy: float | None
    row: dict

    def __getitem__(self, key: str) -> Any:
        return self.row[key]


def _check_header(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise StoreError(
            f"{path} is not a dpplat store (not a SQLite database). It was left untouched; "
            "choose another path with --store PATH or DPPLAT_STORE."
        )


def _check_writable(path: Path) -> None:
    """A store needs its file and its folder writable (WAL mode keeps ``-wal`` and ``-shm`` files beside it)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        return  # created below; a failure there names the folder
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot write to the folder {folder.resolve()} (no write permission): a store needs to create files "
            "there (the database and its -wal and -shm journals). Choose a writable place with --store PATH, or "
            "open the store read-only with `dpplat dashboard`."
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"{path} is read-only (no write permission). Make it writable (chmod u+w) or choose "
                         "another path with --store PATH; it was left untouched.")


class RunStore:
    """The SQLite run store. ``RunStore(path, read_only=True)`` is what the dashboard opens."""

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}: run `dpplat train` first, or pass --store PATH.")
        _check_header(self.path)
        if not read_only:
            _check_writable(self.path)
        try:
            if read_only:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self._prepare()
        except sqlite3.DatabaseError as err:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            raise StoreError(self._explain(err)) from None
        except StoreError:
            self.conn.close()
            raise
        if not read_only:
            self.mark_interrupted()

    def _explain(self, err: sqlite3.DatabaseError) -> str:
        text = str(err)
        if "readonly" in text or "unable to open" in text:
            return (f"{self.path} cannot be written ({text}): check that the file and its folder are writable, or "
                    "choose another path with --store PATH. It was left untouched.")
        if "locked" in text or "busy" in text:
            return (f"{self.path} is locked by another process ({text}) and stayed locked for 30 s; try again when "
                    "it is done. It was left untouched.")
        return (f"{self.path} cannot be opened as a dpplat store ({text}). It was left untouched; restore it from a "
                "backup or choose another path with --store PATH.")

    def _identify(self) -> tuple[int, int, set[str]]:
        """(application id, schema version, tables), read in one transaction so that they agree."""
        c = self.conn
        opened = not c.in_transaction
        if opened:
            c.execute("BEGIN")
        try:
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            version = c.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            if opened:
                c.commit()
        if app_id != APPLICATION_ID and (tables or version):
            raise StoreError(
                f"{self.path} is a SQLite database of another application (tables: {', '.join(sorted(tables)) or 'none'}). "
                "It was left untouched; choose another path with --store PATH."
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this dpplat ({SCHEMA_VERSION}): upgrade dpplat."
            )
        return app_id, version, tables

    def _prepare(self) -> None:
        c = self.conn
        _, version, _ = self._identify()
        self.check_integrity()
        if self.read_only:
            if version < SCHEMA_VERSION:
                raise StoreError(f"{self.path} has an old schema (v{version}); open it once with `dpplat train` to migrate.")
            return
        self._use_wal()
        c.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes, no fsync per step
        c.execute("PRAGMA foreign_keys=ON")
        if version == SCHEMA_VERSION:
            return
        # Another process may be creating or migrating the same file: take the write lock, then look again.
        c.execute("BEGIN IMMEDIATE")
        try:
            _, version, _ = self._identify()
            if version < SCHEMA_VERSION:
                c.execute(f"PRAGMA application_id={APPLICATION_ID}")
                for v in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[v].split(";"):
                        if statement.strip():
                            c.execute(statement)
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            c.commit()
        except BaseException:
            c.rollback()
            raise

    def _use_wal(self, wait: float = 30.0) -> None:
        """Switch a new store to WAL mode (it persists in the file). SQLite answers "locked" at once, without its
        busy timeout, while another process holds the file, so this waits here, as the busy timeout would."""
        deadline = time.monotonic() + wait
        while True:
            try:
                if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def check_integrity(self) -> None:
        """SQLite's ``quick_check`` of every page; a damaged store is refused before anything reads or writes it."""
        problems = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            lines = [line.strip() for p in problems for line in str(p).splitlines()
                     if line.strip() and not line.startswith("***")]
            detail = "; ".join(lines[:2]) + ("; ..." if len(lines) > 2 else "")
            raise StoreError(
                f"{self.path} is damaged (SQLite's integrity check: {detail}). "
                "It was left untouched; restore it from a backup, or recover what is readable with "
                "`sqlite3 FILE .recover`, or choose another path with --store PATH."
            )

    @property
    def store_id(self) -> str:
        """The store's unique id, drawn when it was created: checkpoints and work files carry it."""
        return self.conn.execute("SELECT value FROM store_info WHERE key = 'store_id'").fetchone()[0]

    @property
    def work_dir(self) -> Path:
        """Where this store's checkpoints and audit work files go: ``dpplat-work/<store id>/`` beside the file.

        Keyed by the store's id, not its file name, so two stores in one folder never share a file.
        """
        return self.path.resolve().parent / "dpplat-work" / self.store_id

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- owners ----------------------------------------------------------------------------------
    def mark_interrupted(self) -> list[tuple[str, int]]:
        """Persist ``interrupted`` on running rows whose owner is gone (see :func:`live_status`)."""
        marked = []
        for table in ("runs", "audits"):
            for row in self.iter_rows(f"SELECT * FROM {table} WHERE status = 'running'"):
                if live_status(row) == "interrupted":
                    with self.conn:
                        self.conn.execute(
                            f"UPDATE {table} SET status = 'interrupted' WHERE id = ? AND status = 'running' "
                            "AND owner_pid IS ? AND owner_host IS ?", (row["id"], row["owner_pid"], row["owner_host"]))
                    marked.append((table, row["id"]))
        return marked

    def claim(self, table: str, row_id: int) -> None:
        """Make this process the owner of a row and mark it running; refused while another live process owns it."""
        if table not in ("runs", "audits"):
            raise ValueError(f"cannot claim a row of {table!r}.")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                raise KeyError(f"no {table[:-1]} with id {row_id} in {self.path}.")
            row = dict(row)
            mine = row.get("owner_pid") == os.getpid() and row.get("owner_host") == socket.gethostname()
            if live_status(row) == "running" and not mine:
                raise StoreError(
                    f"{table[:-1]} {row_id} is still running (process {row['owner_pid']} on {row['owner_host']}); "
                    "wait for it, or stop it (Ctrl+C or kill PID) and try again.")
            self.conn.execute(
                f"UPDATE {table} SET status = 'running', owner_pid = ?, owner_host = ?, heartbeat_at = ? WHERE id = ?",
                (os.getpid(), socket.gethostname(), time.time(), row_id))
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise

    def heartbeat(self, table: str, row_id: int) -> Heartbeat:
        """A context manager that keeps ``row_id`` of ``table`` alive to other hosts while it is open."""
        return Heartbeat(self.path, table, row_id)

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, *, dataset: str, model: str, config: dict, **fields: Any) -> int:
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        columns = ["dataset", "model", "config", "started_at", "owner_pid", "owner_host", "heartbeat_at", *fields]
        values = [dataset, model, json.dumps(config, sort_keys=True), time.time(), os.getpid(), socket.gethostname(),
                  time.time(), *fields.values()]
        with self.conn:
            cur = self.conn.execute(
                f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
            )
        return int(cur.lastrowid)

    def update_run(self, run_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"], sort_keys=True)
        with self.conn:
            self.conn.execute(
                f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", [*fields.values(), run_id]
            )

    def get_run(self, run_id: int) -> Run:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {run_id} in {self.path}.")
        return self._run(row)

    def runs(self) -> list[Run]:
        return [self._run(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY id")]

    @staticmethod
    def _run(row: sqlite3.Row) -> Run:
        d = dict(row)
        d["status"] = live_status(d)
        return Run(d["id"], d["dataset"], d["model"], json.loads(d["config"]), d["status"], d["epsilon"], d["delta"], d["accuracy"], d)

    def charge_step(self, run_id: int, spent_steps: int, progress: int) -> None:
        """Record, before a step is taken, that the run's accountant now counts ``spent_steps`` DP-SGD steps and
        that training has reached step ``progress``. ``spent_steps`` never decreases, whatever a caller passes."""
        with self.conn:
            self.conn.execute(
                "UPDATE runs SET spent_steps = MAX(spent_steps, ?), steps = ?, heartbeat_at = ? WHERE id = ?",
                (int(spent_steps), int(progress), time.time(), run_id))

    def record_checkpoint(self, run_id: int, step: int) -> None:
        """The run's checkpoint file now holds step ``step``: a resume refuses any older one."""
        with self.conn:
            self.conn.execute("UPDATE runs SET checkpoint_step = ? WHERE id = ?", (int(step), run_id))

    # -- steps -----------------------------------------------------------------------------------
    def log_step(self, run_id: int, step: int, **metrics: float | None) -> None:
        allowed = {"epsilon", "loss", "accuracy", "test_accuracy"}
        if set(metrics) - allowed:
            raise ValueError(f"unknown step metrics: {sorted(set(metrics) - allowed)}")
        columns = ["run_id", "step", "time", *metrics]
        with self.conn:
            self.conn.execute(
                f"INSERT OR REPLACE INTO steps ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [run_id, step, time.time(), *metrics.values()],
            )

    def steps(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY step", (run_id,))]

    # -- audits and artifacts --------------------------------------------------------------------
    def create_audit(self, *, kind: str, params: dict, run_id: int | None = None) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO audits (run_id, kind, params, created_at, owner_pid, owner_host, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, kind, json.dumps(params, sort_keys=True), time.time(), os.getpid(), socket.gethostname(),
                 time.time()),
            )
        return int(cur.lastrowid)

    def finish_audit(self, audit_id: int, results: dict, status: str = "finished") -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE audits SET results = ?, status = ?, finished_at = ? WHERE id = ?",
                (json.dumps(results, sort_keys=True), status, time.time(), audit_id),
            )

    def _rows(self, table: str, run_id: int | None, kind: str | None) -> list[dict]:
        """Rows of ``audits`` or ``artifacts``, optionally of one run and one kind, oldest first."""
        filters = {"run_id": run_id, "kind": kind}
        used = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in used) or "1=1"
        return [dict(r) for r in self.conn.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY id", list(used.values()))]

    def audits(self, run_id: int | None = None, kind: str | None = None) -> list[dict]:
        out = []
        for d in self._rows("audits", run_id, kind):
            d["status"] = live_status(d)
            d["params"] = json.loads(d["params"])
            d["results"] = json.loads(d["results"]) if d["results"] else None
            out.append(d)
        return out

    def add_artifact(self, *, kind: str, path: str | Path, run_id: int | None = None, audit_id: int | None = None) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO artifacts (run_id, audit_id, kind, path, created_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, audit_id, kind, str(path), time.time()),
            )
        return int(cur.lastrowid)

    def artifacts(self, run_id: int | None = None, kind: str | None = None) -> list[dict]:
        return self._rows("artifacts", run_id, kind)

    def iter_rows(self, sql: str, args: tuple = ()) -> Iterator[dict]:
        """Read-only access for reporting; the dashboard's queries go through here."""
        for row in self.conn.execute(sql, args):
            yield dict(row)
