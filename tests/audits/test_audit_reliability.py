"""Audits under bad plans, damaged stores and work files, and killed parents: one clear line, nothing stored,
no orphaned workers."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpplat.audits.defense_audit import DefenseAuditConfig, prepare_target
from dpplat.audits.mia import run_mia
from dpplat.cli import main
from dpplat.store import RunStore
from tests.audits.test_mia import tiny
from tests.data_store.test_store_reliability import damaged_store

MIA_PLAN = 'kind = "mia"\ndataset = "mnist"\nepsilon = 8\nmodels = 2\nchallenges = 8\nbase_size = 100\n'


@pytest.mark.parametrize("plan,message", [
    (MIA_PLAN + '[train]\nmodel = "mlp"\nlearning_rate = 0.1\n', "its [train] table has unknown key(s) learning_rate"),
    (MIA_PLAN.replace("models = 2", 'models = "two"'), "models must be an integer, got 'two'"),
    (MIA_PLAN + '[train]\nepochs = "one"\n', "epochs (--epochs) must be an integer, got 'one'"),
    (MIA_PLAN + '[train]\nsigma = nan\n', "sigma (--sigma) must be a finite number"),
    (MIA_PLAN.replace("epsilon = 8", "epsilon = -1"), "epsilon must be a positive number or 'inf'"),
    ('kind = "oars"\ndefenses = "blacklight"\n', "defenses must be a list of strings"),
    ('kind = "oars"\nimages = 2.5\n', "images must be an integer"),
    ('kind = "oars"\n[defense_params]\nblacklight = 3\n', "defense_params.blacklight must be a table"),
])
def test_a_bad_plan_is_refused_in_one_line_before_anything_is_stored(tmp_path, capsys, plan, message):
    path = tmp_path / "plan.toml"
    path.write_text(plan)
    store = tmp_path / "s.db"
    started = time.monotonic()
    assert main(["audit", "run", str(path), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and str(path) in err
    assert time.monotonic() - started < 20, "refused before any training"
    assert not store.exists() or RunStore(store).audits() == []


@pytest.mark.parametrize("command", [
    ["train", "--dataset", "mnist", "--model", "mlp", "--epsilon", "2"],
    ["audit", "mia", "--dataset", "mnist", "--models", "2"],
    ["audit", "oars", "--dataset", "mnist"],
    ["dashboard"],
    ["runs"],
])
def test_a_damaged_store_is_refused_in_one_line_before_the_data_is_read(tmp_path, capsys, command):
    store = tmp_path / "s.db"
    before = damaged_store(store)
    data_flag = ["--data-dir", str(tmp_path / "no-such-folder")] if command[0] in ("train", "audit") else []
    assert main([*command, *data_flag, "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and len(err.strip().splitlines()) == 1
    assert store.read_bytes() == before


def test_damaged_and_foreign_work_files_are_moved_aside_and_trained_again(tmp_path):
    config = tiny(math.inf)
    first = run_mia(config, tmp_path)
    files = sorted(tmp_path.glob("model-*.npz"))
    files[1].write_bytes(files[1].read_bytes()[:100])  # truncated
    shutil.copyfile(files[4], files[3])  # another model's scores under model 3's name
    again = run_mia(config, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.bad")) == sorted(f.with_suffix(".bad").name for f in files[1:4:2])
    assert again["counts"] == first["counts"]


def test_a_defense_audit_folder_never_resumes_against_another_model(tmp_path, mnist_model):
    config = DefenseAuditConfig(images=1)
    mine = {"store_id": "a" * 32, "run_id": 1, "step": 8}
    prepare_target(config, tmp_path, mnist_model.model, source=mine)
    assert prepare_target(config, tmp_path, mnist_model.model, source=mine) == tmp_path / "target.pt"
    with pytest.raises(ValueError, match="holds another model"):
        prepare_target(config, tmp_path, mnist_model.model, source={**mine, "step": 16})


AUDIT = ["audit", "mia", "--dataset", "mnist", "--model", "mlp", "--epsilon", "8", "--models", "2",
         "--challenges", "8", "--base-size", "200", "--epochs", "400", "--workers", "2"]


def _workers_of(pid: int) -> list[int]:
    """Pool workers (multiprocessing spawn children) whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _start_audit(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    dpplat = shutil.which("dpplat", path=str(Path(sys.executable).parent)) or "dpplat"
    proc = subprocess.Popen([dpplat, *AUDIT, "--store", str(tmp_path / "s.db")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and len(_workers_of(proc.pid)) < 2:
        time.sleep(0.2)
    workers = _workers_of(proc.pid)
    assert len(workers) == 2, "the audit's two pool workers did not start"
    time.sleep(3)  # into their training jobs
    return proc, workers


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _gone(pids: list[int], within: float) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_killing_the_audit_parent_ends_its_pool_workers(tmp_path):
    proc, workers = _start_audit(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        assert _gone(workers, within=20), "pool workers outlived their killed parent"
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    audit = RunStore(tmp_path / "s.db", read_only=True).audits()[0]
    assert audit["status"] == "interrupted"  # its owner is dead


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_sigterm_stops_an_audit_like_ctrl_c(tmp_path):
    proc, workers = _start_audit(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err
    assert _gone(workers, within=20)
    audit = RunStore(tmp_path / "s.db").audits()[0]
    assert audit["status"] == "interrupted" and "SIGTERM" in audit["results"]["error"]
