"""Audit plans: ``audits/*.toml`` files and the CLI flags both become a config (:class:`MIAConfig` for
``kind = "mia"``, :class:`DefenseAuditConfig` for ``kind = "oars"``), run and stored."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

from dpplat.audits.defense_audit import DefenseAuditConfig, config_key, run_defense_audit
from dpplat.audits.mia import MIAConfig, format_report, run_mia
from dpplat.store import RunStore
from dpplat.tomlfile import read_toml
from dpplat.training import TrainConfig


def parse_epsilon(value) -> float:
    """A claimed epsilon from a plan or flag: a number, or "inf" for the non-private reference."""
    if isinstance(value, str) and value.lower() in ("inf", "infinity", "none"):
        return math.inf
    return float(value)


def load_plan(path: str | Path) -> MIAConfig | DefenseAuditConfig:
    """Read an audit plan. ``kind = "mia"``: MIAConfig keys at the top, training hyper-parameters in
    ``[train]``. ``kind = "oars"``: DefenseAuditConfig keys, with ``[defense_params.NAME]`` and
    ``[attack_params.NAME]`` tables for per-defense and per-attack settings."""
    raw = read_toml(path, "audit plan", "the shipped plans are in audits/")
    kind = raw.pop("kind", "mia")
    raw.pop("description", None)
    if kind == "oars":
        names = {f.name for f in dataclasses.fields(DefenseAuditConfig)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"audit plan {path} has unknown keys {sorted(unknown)}; known: {sorted(names)}.")
        config = DefenseAuditConfig(**raw)
        config.validate()
        return config
    if kind != "mia":
        raise ValueError(f"audit plan {path} has kind {kind!r}; dpplat runs kind = 'mia' and kind = 'oars' plans.")
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


def run_and_store(config: MIAConfig | DefenseAuditConfig, store: RunStore, *, run_id: int | None = None,
                  progress=None) -> tuple[int, dict]:
    """Run the audit in a work folder keyed by the plan (so a rerun resumes) and record it in the store."""
    if isinstance(config, DefenseAuditConfig):
        return _run_defense_audit(config, store, progress)
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


def _run_defense_audit(config: DefenseAuditConfig, store: RunStore, progress) -> tuple[int, dict]:
    from dpplat.audits.target import load_run_model

    config.validate()
    model = load_run_model(store, config.run_id)[0].model if config.run_id is not None else None
    workdir = store.path.resolve().parent / "dpplat-work" / "audits" / f"oars-{config_key(config)}"
    audit_id = store.create_audit(kind="oars", params=dataclasses.asdict(config), run_id=config.run_id)
    try:
        results = run_defense_audit(config, workdir, model=model, progress=progress)
    except BaseException as err:
        store.finish_audit(audit_id, {"error": f"{type(err).__name__}: {err}"}, status="failed")
        raise
    store.finish_audit(audit_id, results)
    store.add_artifact(kind="oars-records", path=results["records_path"], run_id=config.run_id, audit_id=audit_id)
    return audit_id, results


__all__ = ["format_report", "load_plan", "plan_key", "run_and_store"]
