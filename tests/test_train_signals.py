"""A real `dpplat train` process stopped by SIGTERM or killed with SIGKILL: the run says so, and resumes with every
started step still charged."""

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opacus.accountants import create_accountant

from dpplat.cli import main
from dpplat.store import RunStore

TRAIN = ["train", "--dataset", "mnist", "--model", "mlp", "--sigma", "1.0", "--epsilon", "inf", "--epochs", "2",
         "--batch-size", "64", "--subset", "20000", "--test-subset", "200", "--accountant", "rdp", "--quiet"]


def start(store: Path) -> subprocess.Popen:
    dpplat = shutil.which("dpplat", path=str(Path(sys.executable).parent)) or "dpplat"
    return subprocess.Popen([dpplat, *TRAIN, "--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_steps(store: Path, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            row = sqlite3.connect(store).execute("SELECT spent_steps FROM runs WHERE id = 1").fetchone()
        except sqlite3.Error:
            row = None
        if row and row[0] >= at_least:
            return
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"training did not reach step {at_least}: {proc.communicate()[1][-2000:]}")


def rdp_epsilon(steps: int, rate: float) -> float:
    accountant = create_accountant("rdp")
    accountant.history = [(1.0, rate, steps)]
    return accountant.get_epsilon(delta=1e-5)


def test_sigterm_interrupts_with_a_checkpoint_and_the_exact_resume_command(tmp_path, capsys):
    store = tmp_path / "s.db"
    proc = start(store)
    wait_for_steps(store, proc, 5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"Resume with: dpplat train --resume 1 --store {store.resolve()}" in err and "Traceback" not in err
    run = RunStore(store).get_run(1)
    assert run.status == "interrupted" and "SIGTERM" in run["message"]
    assert run["checkpoint_step"] == run["steps"] == run["spent_steps"]  # stopped between steps, all saved
    assert main(["train", "--resume", "1", "--store", str(store), "--quiet"]) == 0
    done = RunStore(store).get_run(1)
    assert done.status == "finished" and done["spent_steps"] == done["steps"] == 2 * 313
    assert done.epsilon == pytest.approx(rdp_epsilon(2 * 313, 1 / 313))


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path):
    store = tmp_path / "s.db"
    proc = start(store)
    wait_for_steps(store, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = RunStore(store, read_only=True).get_run(1)
    assert run.status == "interrupted"  # its process is gone, whatever the row said
    assert run["checkpoint_step"] is None, "killed after its first checkpoint: the test needs a longer epoch"
    killed_at = run["spent_steps"]
    assert main(["train", "--resume", "1", "--store", str(store), "--quiet"]) == 0
    done = RunStore(store).get_run(1)
    assert done.status == "finished" and done["steps"] == 2 * 313
    assert done["spent_steps"] == killed_at + 2 * 313
    assert done.epsilon == pytest.approx(rdp_epsilon(killed_at + 2 * 313, 1 / 313))
