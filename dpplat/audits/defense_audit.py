"""The defense audit: attack a trained model behind each stateful defense, in standard and OARS form.

Every (defense, attack, mode) cell attacks the same correctly classified test images,
one at a time, with the defense's history reset per image (one user per image). Jobs
fan out over a process pool or Ray; each job writes its records to a file keyed by
its inputs, so a killed audit resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dpplat import data as datasets
from dpplat.audits.attacks import MODES, attack_class, available_attacks, create_attack
from dpplat.audits.backends import BACKENDS, make_backend
from dpplat.audits.defenses import POLICIES, available_defenses, create_defense
from dpplat.audits.target import PixelClassifier, fit_target, pixel_images, target_config
from dpplat.config_checks import check_choice, check_range, check_types
from dpplat.training import TrainConfig, build_model

# Perturbation budgets when the plan gives none: the paper's CIFAR-10 values, and the usual MNIST ones.
DEFAULT_EPS = {"mnist": {"linf": 0.3, "l2": 0.1}, "fashion-mnist": {"linf": 0.2, "l2": 0.1}}
PAPER_EPS = {"linf": 0.05, "l2": 0.05}
MODE_GROUPS = {"both": ["standard", "oars"], "all": list(MODES)}  # names for several modes at once


def expand_modes(modes: list[str]) -> list[str]:
    """``modes`` with 'both' and 'all' replaced by the modes they name."""
    return [m for mode in modes for m in MODE_GROUPS.get(mode, [mode])]


@dataclass
class DefenseAuditConfig:
    """One defense audit. ``run_id`` attacks a stored run's model; otherwise ``model`` is trained
    (non-private, ``target_epochs`` on ``target_subset`` images) and cached in the work folder."""

    dataset: str = "mnist"
    model: str = "cnn"
    defenses: list[str] = field(default_factory=lambda: ["blacklight"])
    attacks: list[str] = field(default_factory=lambda: ["nes"])
    modes: list[str] = field(default_factory=lambda: ["standard", "oars"])
    images: int = 100
    skip_images: int = 0  # attack images skip_images.. of the draw: a further sample, disjoint from a first one
    budget: int = 100_000
    eps_linf: float | None = None
    eps_l2: float | None = None
    policy: str = "reject"
    calibration_images: int = 1000
    target_epochs: int = 2
    target_subset: int = 20_000
    seed: int = 0
    backend: str = "local"
    workers: int | None = None
    data_dir: str | None = None
    defense_params: dict = field(default_factory=dict)
    attack_params: dict = field(default_factory=dict)
    run_id: int | None = None

    def __post_init__(self) -> None:
        self.dataset = datasets.canonical_dataset(self.dataset)
        if isinstance(self.modes, list):  # 'both' and 'all' in a plan or the API, as on the CLI
            self.modes = expand_modes(self.modes)
        self.validate()

    def validate(self) -> None:
        """Types and ranges of every key; run when the config is built and again before an audit starts."""
        check_types(self)
        for name in ("calibration_images", "target_epochs", "target_subset"):
            check_range(name, getattr(self, name), low=1)
        check_range("seed", self.seed, low=0)
        check_range("workers", self.workers, low=1)
        check_choice("policy", self.policy, POLICIES)
        for name, table in (("defense_params", self.defense_params), ("attack_params", self.attack_params)):
            for key, value in table.items():
                if not isinstance(value, dict):
                    raise ValueError(f"{name}.{key} must be a table of settings ([{name}.{key}]), got {value!r}.")
        datasets.check_dataset_name(self.dataset)
        for name in self.defenses:
            if name not in available_defenses():
                raise ValueError(f"unknown defense {name!r}; choose from {', '.join(available_defenses())}.")
        for name in self.attacks:
            if name not in available_attacks():
                raise ValueError(f"unknown attack {name!r}; choose from {', '.join(available_attacks())}.")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)} (or 'both', 'all').")
        if self.images < 1:
            raise ValueError(f"images must be at least 1, got {self.images}.")
        if self.skip_images < 0:
            raise ValueError(f"skip_images must be 0 or more (how many of the drawn images to leave out), "
                             f"got {self.skip_images}.")
        if self.budget <= 0:
            raise ValueError(f"the query budget must be positive, got {self.budget}.")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {BACKENDS}.")
        for eps in (self.eps_linf, self.eps_l2):
            if eps is not None and eps <= 0:
                raise ValueError(f"perturbation budgets must be positive, got {eps}.")

    def eps(self, norm: str) -> float:
        given = self.eps_linf if norm == "linf" else self.eps_l2
        return given if given is not None else DEFAULT_EPS.get(self.dataset, PAPER_EPS)[norm]


def config_key(config: DefenseAuditConfig, source: dict | None = None) -> str:
    """The work folder's key: the whole config and, for a stored run's model, which store, run and step it is."""
    payload = json.dumps({**dataclasses.asdict(config), **({"source": source} if source else {})}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _available(config: DefenseAuditConfig, split: str) -> int:
    """How many images the split holds: a small dataset of the user's caps every draw from it."""
    info = datasets.dataset_info(config.dataset, config.data_dir)
    return info.train_size if split == "train" else info.test_size


def _target_config(config: DefenseAuditConfig) -> TrainConfig:
    """The target's recipe; ``target_subset`` images, or all of a smaller training set."""
    subset = config.target_subset if config.target_subset < _available(config, "train") else None
    return target_config(config.dataset, config.model, epochs=config.target_epochs, subset=subset,
                         seed=config.seed, data_dir=config.data_dir)


def prepare_target(config: DefenseAuditConfig, workdir: Path, model: torch.nn.Module | None = None,
                   source: dict | None = None) -> Path:
    """Write the model to attack into the work folder (train it first unless given), for the jobs to load.

    ``source`` says whose model it is (store, run, checkpoint step); a target already in the folder
    is used only if it says the same, so records are never resumed against another model.
    """
    path = workdir / "target.pt"
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False).get("source")
        except Exception:  # noqa: BLE001 - unreadable: written again below
            saved = "unreadable"
        if saved == source:
            return path
        raise ValueError(f"{path} holds another model ({saved or 'a model trained for the plan'}, not "
                         f"{source or 'a model trained for the plan'}); its records cannot be resumed for this audit. "
                         "Delete that work folder, or use another store.")
    train_config = _target_config(config)
    if model is None:
        model = fit_target(train_config)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": dataclasses.asdict(train_config), "state": model.state_dict(), "source": source}, tmp)
    tmp.replace(path)
    return path


def load_target(path: Path) -> PixelClassifier:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    train_config = TrainConfig(**saved["config"])
    net = build_model(train_config)
    net.load_state_dict(saved["state"])
    return PixelClassifier(net, train_config.dataset)


def _build_defense(name: str, model, config: DefenseAuditConfig, workdir: Path):
    params = dict(config.defense_params.get(name, {}))
    info = datasets.dataset_info(config.dataset, config.data_dir)
    shape = (info.channels, info.size, info.size)
    if name == "stateful-detection" and "encoder" not in params:
        reference, _ = pixel_images(config.dataset, "train", subset=min(params.pop("reference_images", 4000), _available(config, "train")),
                                    seed=config.seed + 1, data_dir=config.data_dir)
        params.update(reference=reference, cache_dir=workdir)
    return create_defense(name, model, input_shape=shape, policy=config.policy, seed=config.seed, **params)


def choose_images(model: PixelClassifier, config: DefenseAuditConfig) -> list[dict]:
    """Correctly classified test images, a target class for each, and a start image for decision attacks.

    Start images are other test images the model already labels as the goal (the target class,
    or any other class); choosing them is the attacker's preparation and is not counted as queries.
    """
    x, y = image_pool(config)
    predicted = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    correct = torch.nonzero(predicted == y).flatten()
    drawn = config.skip_images + config.images
    if len(correct) < drawn + 10:
        raise ValueError(f"only {len(correct)} of {len(x)} test images are classified correctly; the model is too "
                         "weak to attack meaningfully (train it longer) or ask for fewer --images.")
    rng = np.random.default_rng(config.seed)
    chosen = correct[:drawn].tolist()
    spare = correct[drawn:].tolist()
    classes = len(datasets.dataset_info(config.dataset, config.data_dir).classes)
    records = []
    for i in chosen:
        label = int(y[i])
        target = int((label + 1 + rng.integers(classes - 1)) % classes)
        targeted_pool = [j for j in spare if int(y[j]) == target]
        untargeted_pool = [j for j in spare if int(y[j]) != label]
        records.append({"index": i, "label": label, "target": target,
                        "start_targeted": int(rng.choice(targeted_pool)) if targeted_pool else None,
                        "start_untargeted": int(rng.choice(untargeted_pool))})
    return records[config.skip_images:]  # drawn with the skipped ones, so they are the rest of a larger audit


def image_pool(config: DefenseAuditConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images an audit draws from (a fixed, seeded subset)."""
    pool = max(2000, 4 * (config.skip_images + config.images))
    return pixel_images(config.dataset, "test", subset=min(pool, 10_000, _available(config, "test")), seed=config.seed + 7,
                        data_dir=config.data_dir)


def run_cell(job: dict) -> str:
    """One job: one (defense, attack, mode) over some images; writes its records to ``job['out']``."""
    torch.set_num_threads(job.get("threads", 1))
    config = DefenseAuditConfig(**job["config"])
    workdir = Path(job["workdir"])
    model = load_target(workdir / "target.pt")
    defense = _build_defense(job["defense"], model, config, workdir)
    cls = attack_class(job["attack"])
    attack = create_attack(job["attack"], eps=config.eps(cls.norm), seed=config.seed,
                           **config.attack_params.get(job["attack"], {}))
    chosen = json.loads((workdir / "images.json").read_text())  # chosen once, by run_defense_audit
    x, _ = image_pool(config)
    records = []
    for n in job["images"]:
        image = chosen[n]
        start_index = image["start_targeted"] if cls.targeted else image["start_untargeted"]
        started = time.time()
        if cls.needs_start and start_index is None:
            records.append({**image, "success": False, "queries": 0, "rejections": 0, "distance": None,
                            "stopped": "no-start-image", "queries_if_banned": 0, "seconds": 0.0})
            continue
        defense.reseed([config.seed, image["index"]])  # the image's salt, whatever job it is in
        result = attack.attack(defense, x[image["index"]], image["label"], target=image["target"],
                               start=x[start_index] if start_index is not None else None, mode=job["mode"],
                               budget=config.budget, image_index=image["index"])
        records.append({**image, **result.as_record(), "queries_if_banned": defense.stats.queries_if_banned(),
                        "seconds": time.time() - started})
    out = Path(job["out"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(out)
    return str(out)


def summarise(records: list[dict]) -> dict:
    """Success rate, queries over successes (mean, median), mean rejections, queries a ban allows."""
    wins = [r for r in records if r["success"]]
    queries = [r["queries"] for r in wins]
    return {"images": len(records), "success_rate": len(wins) / max(len(records), 1),
            "mean_queries": statistics.fmean(queries) if queries else None,
            "median_queries": statistics.median(queries) if queries else None,
            "mean_rejections": statistics.fmean(r["rejections"] for r in records) if records else None,
            "mean_queries_if_banned": statistics.fmean(r["queries_if_banned"] for r in records) if records else None,
            "seconds": sum(r["seconds"] for r in records)}


def run_defense_audit(config: DefenseAuditConfig, workdir: str | Path, *, model: torch.nn.Module | None = None,
                      progress: Callable[[str], None] | None = None, source: dict | None = None) -> dict:
    """Run every cell of the audit and return the summaries, per-image records and defense calibrations."""
    config.validate()
    say = progress or (lambda _: None)
    started = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"target model: {'given' if model is not None else f'training {config.model} on {config.dataset}'}")
    target = load_target(prepare_target(config, workdir, model, source))
    chosen, chosen_path = choose_images(target, config), workdir / "images.json"
    if not chosen_path.exists():
        chosen_path.write_text(json.dumps(chosen))
    elif json.loads(chosen_path.read_text()) != chosen:
        # the finished job files there belong to those images: resuming would mix two samples
        raise ValueError(f"{workdir} holds an audit of other images (its images.json is not --images {config.images} "
                         f"--skip-images {config.skip_images} of this model); use another work folder.")
    calibrations = {}
    benign, _ = pixel_images(config.dataset, "test", subset=min(config.calibration_images, _available(config, "test")), seed=config.seed + 11,
                             data_dir=config.data_dir)
    for name in config.defenses:  # also builds (and caches) a learned detector once, before the fan-out
        cal = _build_defense(name, target, config, workdir).calibrate(benign)
        calibrations[name] = cal.as_dict()
        say(f"{name}: {cal.false_positives}/{cal.benign_images} benign test images flagged "
            f"({100 * cal.false_positive_rate:.1f}% false positives)")
    backend = make_backend(config.backend, workers=config.workers)
    jobs = plan_jobs(config, workdir, getattr(backend, "workers", 1))
    todo = [j for j in jobs if _read_records(Path(j["out"])) is None]
    say(f"{len(jobs)} jobs ({len(jobs) - len(todo)} already done) on the {backend.name} backend")
    backend.map(run_cell, todo)
    results = collect(config, workdir, jobs)
    results.update(defenses=calibrations, wall_seconds=time.time() - started)
    return results


def plan_jobs(config: DefenseAuditConfig, workdir: Path, workers: int) -> list[dict]:
    """One job per (defense, attack, mode) and chunk of images; each writes its own keyed file."""
    chunks = [c.tolist() for c in np.array_split(np.arange(config.images), max(1, min(workers, config.images)))]
    jobs = []
    for defense in config.defenses:
        for attack in config.attacks:
            for mode in config.modes:
                for k, chunk in enumerate(chunks):
                    out = workdir / f"{defense}-{attack}-{mode}-{k}-of-{len(chunks)}.json"
                    jobs.append({"config": dataclasses.asdict(config), "workdir": str(workdir), "defense": defense,
                                 "attack": attack, "mode": mode, "images": chunk, "out": str(out)})
    return jobs


def _read_records(path: Path) -> list[dict] | None:
    """A job's records, or None when the file is missing or unreadable (then the job runs again)."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return records if isinstance(records, list) else None


def collect(config: DefenseAuditConfig, workdir: Path, jobs: list[dict]) -> dict:
    """Summaries and per-image records from the jobs' files; cells whose jobs are missing are left out
    (so a run cut short can still be summarised: each summary says how many images it covers)."""
    summaries, records = [], []
    for defense in config.defenses:
        for attack in config.attacks:
            for mode in config.modes:
                cell = []
                for job in jobs:
                    if (job["defense"], job["attack"], job["mode"]) == (defense, attack, mode):
                        cell += _read_records(Path(job["out"])) or []
                if not cell:
                    continue
                cls = attack_class(attack)
                summaries.append({"defense": defense, "attack": attack, "mode": mode, "norm": cls.norm,
                                  "eps": config.eps(cls.norm), **summarise(cell)})
                records += [{"defense": defense, "attack": attack, "mode": mode, **r} for r in cell]
    (workdir / "records.json").write_text(json.dumps(records))
    return {"summaries": summaries, "budget": config.budget, "records_path": str(workdir / "records.json")}


def format_table(results: dict) -> str:
    lines = [f"{'defense':<20}{'attack':<10}{'mode':<10}{'success':>9}{'mean q':>10}{'median q':>10}"
             f"{'rejections':>12}{'q if banned':>13}"]
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    for s in results["summaries"]:
        lines.append(f"{s['defense']:<20}{s['attack']:<10}{s['mode']:<10}{100 * s['success_rate']:>8.0f}%"
                     f"{fmt(s['mean_queries']):>10}{fmt(s['median_queries']):>10}{fmt(s['mean_rejections']):>12}"
                     f"{fmt(s['mean_queries_if_banned']):>13}")
    for name, cal in results.get("defenses", {}).items():
        lines.append(f"{name}: {100 * cal['false_positive_rate']:.1f}% false positives on "
                     f"{cal['benign_images']} benign test images")
    return "\n".join(lines)
