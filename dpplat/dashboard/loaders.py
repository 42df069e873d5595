"""Cached, read-only access to the run store for the app's pages (Streamlit's cached-loader idiom).

The connection is a cached resource, queries are cached data with a short ttl, so
the dashboard stays fresh while a trainer writes, and a reader can never modify
the store. Every failure becomes a message on the page, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from dpplat.store import RunStore, StoreError, live_status

TTL = 5  # seconds: fresh enough to watch a training run, cheap enough to rerun often


def store_path() -> str:
    """``--store PATH`` after ``--`` on the streamlit command line, else ``DPPLAT_STORE``, else ./dpplat.db."""
    argv = sys.argv[1:]
    if "--store" in argv and argv.index("--store") + 1 < len(argv):
        return str(Path(argv[argv.index("--store") + 1]).resolve())
    return str(Path(os.environ.get("DPPLAT_STORE", "dpplat.db")).resolve())


@st.cache_resource
def connect(path: str) -> RunStore:
    return RunStore(path, read_only=True)


def open_store() -> RunStore | None:
    """The store, or None after showing a clear message on the page."""
    path = store_path()
    try:
        return connect(path)
    except StoreError as err:
        st.error(f"Cannot open the run store: {err}")
        st.caption("Open another store with `dpplat dashboard --store PATH`.")
        return None


@st.cache_data(ttl=TTL)
def runs(path: str) -> pd.DataFrame:
    rows = list(connect(path).iter_rows("SELECT * FROM runs ORDER BY id"))
    for row in rows:
        row["status"] = live_status(row)  # a run whose process is gone shows as interrupted
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    configs = frame["config"].map(json.loads)
    frame["family"] = [c.get("family") or m for c, m in zip(configs, frame["model"])]
    frame["evaluated_on"] = ["validation" if c.get("validation") else "test" for c in configs]  # the accuracy's split
    frame["started"] = pd.to_datetime(frame["started_at"], unit="s")
    return frame


@st.cache_data(ttl=TTL)
def steps(path: str, run_id: int) -> pd.DataFrame:
    return pd.DataFrame(connect(path).steps(run_id))


@st.cache_data(ttl=TTL)
def audits(path: str, kind: str | None = None) -> list[dict]:
    return connect(path).audits(kind=kind)


def empty_store_message() -> None:
    st.info(
        "This store holds no runs yet. Fill it with:\n\n"
        "```bash\ndpplat train --dataset mnist --model cnn --epsilon 2 --epochs 5\n"
        "dpplat audit run audits/mnist-eps8.toml\n```"
    )


def run_label(row) -> str:
    name = f" {row['name']}" if isinstance(row.get("name"), str) and row.get("name") else ""
    return f"run {row['id']}{name}: {row['model']} on {row['dataset']}"


def select_run(label: str = "Run"):
    """Open the store and let the user pick a run: (store path, runs frame, chosen row), or None after a message."""
    if open_store() is None:
        return None
    path = store_path()
    frame = runs(path)
    if frame.empty:
        empty_store_message()
        return None
    labels = {int(r["id"]): run_label(r) for _, r in frame.iterrows()}
    run_id = st.selectbox(label, list(labels)[::-1], format_func=labels.get)
    return path, frame, frame[frame["id"] == run_id].iloc[0]


def finished_of(path: str, kinds: tuple[str, ...]) -> list[dict]:
    """The store's finished audits of these kinds, with results, by id."""
    return sorted((a for kind in kinds for a in audits(path, kind) if a["status"] == "finished" and a["results"]),
                  key=lambda a: a["id"])


def finished_audits(kind: str, empty_message: str) -> list[dict] | None:
    """The store's finished audits of ``kind``, or None after a message (no store, or none yet)."""
    if open_store() is None:
        return None
    found = finished_of(store_path(), (kind,))
    if not found:
        st.info(empty_message)
        return None
    return found
