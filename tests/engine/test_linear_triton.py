"""The Linear rule's Triton kernels (``DPPLAT_TRITON=1``) on the CPU, through Triton's interpreter.

Triton reads ``TRITON_INTERPRET`` when it is first imported, and other tests import it (through
``torch.compile`` and ``transformers``) without it, so the checks run in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpplat.engine.rules import linear_triton

ROOT = Path(__file__).resolve().parents[2]


def test_the_kernels_match_the_pytorch_path_and_the_per_sample_loop_under_the_interpreter():
    checks = Path(__file__).with_name("triton_interpreted_checks.py")
    env = {**os.environ, "TRITON_INTERPRET": "1", "DPPLAT_TRITON": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checks)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout, done.stdout[-2000:]


def test_asking_for_the_kernels_on_the_cpu_without_the_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("DPPLAT_TRITON", "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1"):
        linear_triton.enabled(torch.zeros(1))
    monkeypatch.delenv("DPPLAT_TRITON")
    assert not linear_triton.enabled(torch.zeros(1))
