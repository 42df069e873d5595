"""The store under crashes and concurrent writers: atomic creation, damaged pages, unwritable folders, owners that
die, heartbeats that go stale."""

import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from dpplat.store import STALE_AFTER, RunStore, StoreError, live_status


def _create_many(folder: str, rounds: int, barrier, results) -> None:
    from dpplat.store import RunStore

    for i in range(rounds):
        barrier.wait()
        try:
            RunStore(os.path.join(folder, f"s{i}.db")).close()
            results.put(None)
        except Exception as err:  # noqa: BLE001 - every failure is reported to the test
            results.put(f"round {i}: {err}")


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    """Three processes open each of 60 new stores at the same instant: every open succeeds, one schema results."""
    rounds, workers = 60, 3
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_create_many, args=(str(tmp_path), rounds, barrier, results)) for _ in range(workers)]
    for p in procs:
        p.start()
    failures = [r for r in (results.get(timeout=120) for _ in range(rounds * workers)) if r]
    for p in procs:
        p.join(30)
    assert failures == []
    for i in range(rounds):
        store = RunStore(tmp_path / f"s{i}.db")
        assert len(store.store_id) == 32
        assert store.conn.execute("SELECT COUNT(*) FROM store_info").fetchone()[0] == 1


def damaged_store(path) -> bytes:
    """A store whose header and schema are intact but two table pages are garbage; returns its bytes."""
    store = RunStore(path)
    run = store.create_run(dataset="mnist", model="cnn", config={})
    for i in range(2000):
        store.log_step(run, i, epsilon=0.1, loss=1.0)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    raw = bytearray(path.read_bytes())
    raw[4096 * 8: 4096 * 10] = b"\x13" * 8192
    path.write_bytes(bytes(raw))
    return bytes(raw)


@pytest.mark.parametrize("read_only", [False, True])
def test_a_store_with_damaged_pages_is_refused_in_one_line_and_untouched(tmp_path, read_only):
    path = tmp_path / "s.db"
    before = damaged_store(path)
    with pytest.raises(StoreError, match="is damaged") as caught:
        RunStore(path, read_only=read_only)
    assert "\n" not in str(caught.value) and "sqlite3 FILE .recover" in str(caught.value)
    assert path.read_bytes() == before


def _make_unwritable(folder) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    # root ignores permission bits; an immutable folder refuses even root
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not permitted: no way to make a folder unwritable here")


def _make_writable(folder) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_a_store_in_an_unwritable_folder_says_so(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    RunStore(folder / "s.db").close()
    (folder / "s.db-wal").unlink(missing_ok=True)
    (folder / "s.db-shm").unlink(missing_ok=True)
    _make_unwritable(folder)
    try:
        with pytest.raises(StoreError, match="no write permission") as caught:
            RunStore(folder / "s.db")
        assert "backup" not in str(caught.value)
        with pytest.raises(StoreError, match="cannot write to the folder"):
            RunStore(folder / "new.db")
    finally:
        _make_writable(folder)


OWNER = """
import sys, time
from dpplat.store import RunStore
store = RunStore(sys.argv[1])
store.create_run(dataset="mnist", model="cnn", config={})
print("created", flush=True)
time.sleep(120)
"""


def test_a_running_row_whose_process_died_reads_and_is_stored_as_interrupted(tmp_path):
    path = tmp_path / "s.db"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "created"
        reader = RunStore(path, read_only=True)
        assert reader.get_run(1).status == "running"
        RunStore(path).close()  # a writer opening the store leaves a live owner's row alone
        assert reader.get_run(1)["owner_pid"] == owner.pid
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert reader.get_run(1).status == "interrupted"
    assert reader.runs()[0].status == "interrupted"
    writer = RunStore(path)  # persisted on the next write open
    raw = sqlite3.connect(path).execute("SELECT status FROM runs WHERE id = 1").fetchone()[0]
    assert raw == "interrupted"
    writer.close()


def test_another_hosts_row_is_running_while_its_heartbeat_is_fresh():
    now = time.time()
    row = {"status": "running", "owner_pid": 1, "owner_host": socket.gethostname() + "-elsewhere"}
    assert live_status({**row, "heartbeat_at": now - 5}, now) == "running"
    assert live_status({**row, "heartbeat_at": now - STALE_AFTER - 1}, now) == "interrupted"
    assert live_status({**row, "owner_pid": None, "heartbeat_at": now}, now) == "interrupted"
    assert live_status({**row, "status": "finished", "heartbeat_at": None}, now) == "finished"


def test_a_live_owner_keeps_its_row(tmp_path):
    path = tmp_path / "s.db"
    store = RunStore(path)
    run = store.create_run(dataset="mnist", model="cnn", config={})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.conn.execute("UPDATE runs SET owner_pid = ? WHERE id = ?", (sleeper.pid, run))
        store.conn.commit()
        with pytest.raises(StoreError, match=f"still running \\(process {sleeper.pid}"):
            store.claim("runs", run)
    finally:
        sleeper.kill()
        sleeper.wait()
    store.claim("runs", run)
    assert store.get_run(run)["owner_pid"] == os.getpid() and store.get_run(run).status == "running"


def test_the_heartbeat_refreshes_from_its_own_thread(tmp_path):
    store = RunStore(tmp_path / "s.db")
    run = store.create_run(dataset="mnist", model="cnn", config={})
    store.conn.execute("UPDATE runs SET heartbeat_at = 0 WHERE id = ?", (run,))
    store.conn.commit()
    from dpplat.store import Heartbeat

    with Heartbeat(store.path, "runs", run, every=0.05):
        time.sleep(0.5)
    assert store.get_run(run)["heartbeat_at"] > time.time() - 5
