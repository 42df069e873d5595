"""Audit plans: ``audits/*.toml`` files and the CLI flags both become an :class:`MIAConfig`, run and stored."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

from dpplat.audits.mia import MIAConfig, format_report, run_mia
from dpplat.store import RunStore
from dpplat.tomlfile import read_toml
from dpplat.training import TrainConfig


def parse_epsilon(value) -> float:
    """A claimed epsilon from a plan or flag: a number, or "inf" for the non-private reference."""
    if isinstance(value, str) and value.lower() in ("inf", "infinity", "none"):
        return math.inf
    return float(value)


def load_plan(path: str | Path) -> MIAConfig:
    """Read an audit plan: MIAConfig keys at the top, training hyper-parameters in ``[train]``."""
    raw = read_toml(path, "audit plan", "the shipped plans are in audits/")
    kind = raw.pop("kind", "mia")
    if kind != "mia":
        raise ValueError(f"audit plan {path} has kind {kind!r}; this dpplat runs kind = 'mia' plans.")
    raw.pop("description", None)
    train = raw.pop("train", {})
    names = {f.name for f in dataclasses.fields(MIAConfig)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"audit plan {path} has unknown keys {sorted(unknown)}; known: {sorted(names - {'train'})}.")
    if "epsilon" in raw:
        raw["epsilon"] = parse_epsilon(raw["epsilon"])
    default_train = dataclasses.asdict(MIAConfig().train)
    default_train.update(train)
    return MIAConfig(**raw, train=TrainConfig(**{k: v for k, v in default_train.items()}))


def plan_key(config: MIAConfig) -> str:
    payload = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_and_store(config: MIAConfig, store: RunStore, *, run_id: int | None = None, progress=None) -> tuple[int, dict]:
    """Run the audit in a work folder keyed by the plan (so a rerun resumes) and record it in the store."""
    workdir = store.path.resolve().parent / "dpplat-work" / "audits" / f"mia-{plan_key(config)}"
    params = dataclasses.asdict(config)
    params["epsilon"] = None if math.isinf(config.epsilon) else config.epsilon
    audit_id = store.create_audit(kind="mia", params=params, run_id=run_id)
    try:
        results = run_mia(config, workdir, progress=progress)
    except BaseException as err:
        store.finish_audit(audit_id, {"error": f"{type(err).__name__}: {err}"}, status="failed")
        raise
    store.finish_audit(audit_id, results)
    store.add_artifact(kind="mia-scores", path=results["scores_path"], run_id=run_id, audit_id=audit_id)
    return audit_id, results


__all__ = ["format_report", "load_plan", "plan_key", "run_and_store"]
