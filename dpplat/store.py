"""The run store: SQLite in WAL mode, so the dashboard can read while a trainer writes.

Tables: ``runs`` (config, dataset, model, DP parameters, accountant, final epsilon and
delta, accuracy, status, timestamps, the privacy statement), ``steps`` (per-step
epsilon, loss, accuracy), ``audits`` (kind, parameters and results as JSON) and
``artifacts`` (paths of checkpoints and arrays). ``PRAGMA user_version`` holds the
schema version and :data:`MIGRATIONS` brings an older store up to date. A file that
is not SQLite, or a SQLite database that is not a dpplat store, is refused with a
clear error and left untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

APPLICATION_ID = 0x44505054  # "DPPT": marks a SQLite file as a dpplat store

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT,
        dataset TEXT NOT NULL,
        model TEXT NOT NULL,
        config TEXT NOT NULL,
        noise_multiplier REAL,
        max_grad_norm REAL,
        clipping TEXT,
        sample_rate REAL,
        batch_size INTEGER,
        dataset_size INTEGER,
        accountant TEXT,
        target_epsilon REAL,
        delta REAL,
        epsilon REAL,
        steps INTEGER DEFAULT 0,
        accuracy REAL,
        status TEXT NOT NULL DEFAULT 'running',
        message TEXT,
        statement TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        epsilon REAL,
        loss REAL,
        accuracy REAL,
        test_accuracy REAL,
        time REAL,
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE audits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        results TEXT,
        status TEXT NOT NULL DEFAULT 'running',
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
        audit_id INTEGER REFERENCES audits(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX steps_by_run ON steps(run_id, step);
    CREATE INDEX audits_by_run ON audits(run_id);
    CREATE INDEX artifacts_by_run ON artifacts(run_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

RUN_FIELDS = (
    "name", "dataset", "model", "config", "noise_multiplier", "max_grad_norm", "clipping", "sample_rate",
    "batch_size", "dataset_size", "accountant", "target_epsilon", "delta", "epsilon", "steps", "accuracy",
    "status", "message", "statement", "finished_at",
)


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


class RunStore:
    """The SQLite run store. ``RunStore(path, read_only=True)`` is what the dashboard opens."""

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}: run `dpplat train` first, or pass --store PATH.")
        _check_header(self.path)
        try:
            if read_only:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self._prepare()
        except sqlite3.DatabaseError as err:
            raise StoreError(
                f"{self.path} cannot be opened as a dpplat store ({err}). It was left untouched; restore it from a "
                "backup or choose another path with --store PATH."
            ) from None

    def _prepare(self) -> None:
        c = self.conn
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        version = c.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id != APPLICATION_ID and (tables or version):
            raise StoreError(
                f"{self.path} is a SQLite database of another application (tables: {', '.join(sorted(tables)) or 'none'}). "
                "It was left untouched; choose another path with --store PATH."
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this dpplat ({SCHEMA_VERSION}): upgrade dpplat."
            )
        if self.read_only:
            if version < SCHEMA_VERSION:
                raise StoreError(f"{self.path} has an old schema (v{version}); open it once with `dpplat train` to migrate.")
            return
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes, no fsync per step
        c.execute("PRAGMA foreign_keys=ON")
        if version < SCHEMA_VERSION:
            with c:
                c.execute(f"PRAGMA application_id={APPLICATION_ID}")
                for v in range(version, SCHEMA_VERSION):
                    c.executescript("BEGIN;" + MIGRATIONS[v] + f"PRAGMA user_version={v + 1};COMMIT;")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, *, dataset: str, model: str, config: dict, **fields: Any) -> int:
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        columns = ["dataset", "model", "config", "started_at", *fields]
        values = [dataset, model, json.dumps(config, sort_keys=True), time.time(), *fields.values()]
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
        return Run(d["id"], d["dataset"], d["model"], json.loads(d["config"]), d["status"], d["epsilon"], d["delta"], d["accuracy"], d)

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
                "INSERT INTO audits (run_id, kind, params, created_at) VALUES (?, ?, ?, ?)",
                (run_id, kind, json.dumps(params, sort_keys=True), time.time()),
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
