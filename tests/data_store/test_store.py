"""The SQLite run store: schema, migrations, WAL reader during writes, refusing foreign or corrupt files."""

import sqlite3

import pytest

from dpplat.store import SCHEMA_VERSION, RunStore, StoreError


def test_runs_steps_audits_artifacts_roundtrip(tmp_path):
    store = RunStore(tmp_path / "s.db")
    run = store.create_run(dataset="mnist", model="cnn", config={"epsilon": 2}, noise_multiplier=1.1, delta=1e-5)
    store.log_step(run, 10, epsilon=0.5, loss=1.2)
    store.log_step(run, 20, epsilon=0.7, loss=0.9, test_accuracy=0.9)
    store.update_run(run, status="finished", epsilon=0.7, accuracy=0.9)
    audit = store.create_audit(kind="mia", params={"models": 4}, run_id=run)
    store.finish_audit(audit, {"low": 0.1, "high": 1.0})
    store.add_artifact(kind="checkpoint", path=tmp_path / "c.pt", run_id=run)
    r = store.get_run(run)
    assert (r.status, r.epsilon, r.accuracy, r.config) == ("finished", 0.7, 0.9, {"epsilon": 2})
    assert [s["step"] for s in store.steps(run)] == [10, 20]
    assert store.audits(run_id=run)[0]["results"] == {"low": 0.1, "high": 1.0}
    assert store.artifacts(run, kind="checkpoint")[0]["path"].endswith("c.pt")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reader_sees_committed_rows_while_writer_is_open(tmp_path):
    writer = RunStore(tmp_path / "s.db")
    run = writer.create_run(dataset="mnist", model="cnn", config={})
    reader = RunStore(tmp_path / "s.db", read_only=True)
    writer.conn.execute("BEGIN IMMEDIATE")  # a writer mid-transaction does not block WAL readers
    writer.conn.execute("UPDATE runs SET steps = 5 WHERE id = ?", (run,))
    assert reader.get_run(run)["steps"] == 0
    writer.conn.commit()
    assert reader.get_run(run)["steps"] == 5
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM runs")


def test_foreign_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("my notes, not a database\n" * 10)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a dpplat store"):
        RunStore(path)
    assert path.read_bytes() == before


def test_other_sqlite_database_is_refused_and_untouched(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        RunStore(path)
    assert path.read_bytes() == before


def test_corrupt_store_gives_clear_error_and_keeps_bytes(tmp_path):
    path = tmp_path / "s.db"
    store = RunStore(path)
    store.create_run(dataset="mnist", model="cnn", config={})
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    raw = bytearray(path.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # smash the schema page, keep the header
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="cannot be opened as a dpplat store"):
        RunStore(path)
    assert path.read_bytes() == bytes(raw)


def test_missing_store_for_reader(tmp_path):
    with pytest.raises(StoreError, match="run `dpplat train` first"):
        RunStore(tmp_path / "nope.db", read_only=True)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.db"
    RunStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="upgrade dpplat"):
        RunStore(path)


def test_runs_stored_as_cifar10_before_the_original_dataset_existed_name_the_jpeg_copy(tmp_path):
    path = tmp_path / "s.db"
    with RunStore(path) as store:
        old = store.create_run(dataset="cifar10", model="cnn", config={"dataset": "cifar10", "epochs": 1})
        mnist = store.create_run(dataset="mnist", model="cnn", config={"dataset": "mnist"})
        audit = store.create_audit(kind="mia", params={"dataset": "cifar10", "models": 4})
        store.create_audit(kind="scores", params={"members": "a.npy"})
        store.conn.execute("PRAGMA user_version=2")  # as a store written before version 3
    with RunStore(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.get_run(old).dataset == "cifar10-jpeg"
        assert store.get_run(old).config == {"dataset": "cifar10-jpeg", "epochs": 1}
        assert store.get_run(mnist).dataset == "mnist"
        params = {a["id"]: a["params"] for a in store.audits()}
        assert params[audit]["dataset"] == "cifar10-jpeg" and params[audit]["models"] == 4
