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
from dpplat.config_checks import check_keys
from dpplat.data import dataset_info
from dpplat.store import RunStore
from dpplat.shipped import resolve
from dpplat.tomlfile import read_toml
from dpplat.training import TrainConfig


def parse_epsilon(value) -> float:
    """A claimed epsilon from a plan or flag: a positive number, or "inf" for the non-private reference."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "none"):
        return math.inf
    try:
        epsilon = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"epsilon must be a positive number or 'inf', got {value!r}.") from None
    if not epsilon > 0:
        raise ValueError(f"epsilon must be a positive number or 'inf', got {value!r}.")
    return epsilon


def load_plan(path: str | Path) -> MIAConfig | DefenseAuditConfig:
    """Read an audit plan. ``kind = "mia"``: MIAConfig keys at the top, training hyper-parameters in
    ``[train]``. ``kind = "oars"``: DefenseAuditConfig keys, with ``[defense_params.NAME]`` and
    ``[attack_params.NAME]`` tables for per-defense and per-attack settings.

    Every key and type is checked here, before anything trains or is stored; a wrong one gets one line
    naming the plan and the key."""
    raw = read_toml(resolve("plan", path), "audit plan")
    kind = raw.pop("kind", "mia")
    raw.pop("description", None)
    try:
        return _plan_config(kind, raw)
    except ValueError as err:
        raise ValueError(f"audit plan {path}: {err}") from None


def _plan_config(kind: str, raw: dict) -> MIAConfig | DefenseAuditConfig:
    if kind == "oars":
        check_keys("the plan", raw, [f.name for f in dataclasses.fields(DefenseAuditConfig)])
        return DefenseAuditConfig(**raw)
    if kind != "mia":
        raise ValueError(f"kind is {kind!r}; dpplat runs kind = 'mia' and kind = 'oars' plans.")
    train = raw.pop("train", {})
    if not isinstance(train, dict):
        raise ValueError(f"train must be a table ([train]) of training settings, got {train!r}.")
    check_keys("the plan", raw, [f.name for f in dataclasses.fields(MIAConfig) if f.name != "train"])
    check_keys("its [train] table", train, [f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra"])
    if "epsilon" in raw:
        raw["epsilon"] = parse_epsilon(raw["epsilon"])
    default_train = dataclasses.asdict(MIAConfig().train)
    default_train.update(train)
    return MIAConfig(**raw, train=TrainConfig(**default_train))


def plan_key(config: MIAConfig) -> str:
    payload = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_and_store(config: MIAConfig | DefenseAuditConfig, store: RunStore, *, run_id: int | None = None,
                  progress=None) -> tuple[int, dict]:
    """Run the audit in a work folder keyed by the plan (so a rerun resumes) and record it in the store.

    The configuration is checked before the audit's row is created; the work folder lies in the
    store's own work folder, so two stores never share work files. A stopped audit (Ctrl+C,
    SIGTERM) is recorded as ``interrupted``, one that raised as ``failed``.
    """
    config.validate()
    dataset_info(config.dataset, config.data_dir)  # a user's .npz is read and checked before the audit is stored
    if isinstance(config, DefenseAuditConfig):
        return _run_defense_audit(config, store, progress)
    workdir = store.work_dir / "audits" / f"mia-{plan_key(config)}"
    params = dataclasses.asdict(config)
    params["epsilon"] = None if math.isinf(config.epsilon) else config.epsilon
    audit_id = store.create_audit(kind="mia", params=params, run_id=run_id)
    results = _recorded(store, audit_id, lambda: run_mia(config, workdir, progress=progress))
    store.add_artifact(kind="mia-scores", path=results["scores_path"], run_id=run_id, audit_id=audit_id)
    return audit_id, results


def run_and_store_whitebox(config, store: RunStore, progress=None) -> tuple[int, dict]:
    """Run a white-box audit (:mod:`dpplat.audits.whitebox`) and record it in the store as kind ``whitebox``."""
    from dpplat.audits.whitebox import audited_model, run_whitebox

    config.validate()
    dataset_info(config.dataset, config.data_dir)  # a user's dataset is read and checked before the audit is stored
    audited_model(config)  # and the model built and checked
    audit_id = store.create_audit(kind="whitebox", params=dataclasses.asdict(config))
    return audit_id, _recorded(store, audit_id, lambda: run_whitebox(config, progress=progress))


def _recorded(store: RunStore, audit_id: int, work) -> dict:
    """Run ``work`` with the audit row kept alive by a heartbeat; record its results or how it ended."""
    with store.heartbeat("audits", audit_id):
        try:
            results = work()
        except KeyboardInterrupt as err:
            store.finish_audit(audit_id, {"error": f"stopped by {err or 'SIGINT'}"}, status="interrupted")
            raise
        except BaseException as err:
            store.finish_audit(audit_id, {"error": f"{type(err).__name__}: {err}"}, status="failed")
            raise
    store.finish_audit(audit_id, results)
    return results


def _run_defense_audit(config: DefenseAuditConfig, store: RunStore, progress) -> tuple[int, dict]:
    from dpplat.audits.target import load_run_model
    from dpplat.checkpoints import load_run_checkpoint

    source = None
    model = None
    if config.run_id is not None:
        state = load_run_checkpoint(store, config.run_id)
        model = load_run_model(store, config.run_id, state)[0].model
        source = {"store_id": store.store_id, "run_id": config.run_id, "step": state["extra"]["identity"]["step"]}
    # keyed by the run's checkpoint too: a run trained further is a new model, with new records
    workdir = store.work_dir / "audits" / f"oars-{config_key(config, source)}"
    audit_id = store.create_audit(kind="oars", params=dataclasses.asdict(config), run_id=config.run_id)
    results = _recorded(store, audit_id, lambda: run_defense_audit(config, workdir, model=model, progress=progress,
                                                                   source=source))
    store.add_artifact(kind="oars-records", path=results["records_path"], run_id=config.run_id, audit_id=audit_id)
    return audit_id, results


__all__ = ["format_report", "load_plan", "plan_key", "run_and_store"]
