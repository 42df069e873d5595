"""The canary game: train many models with random canary inclusion, attack, count errors, estimate epsilon.

Each of ``models`` models trains on a fixed base set plus each of ``challenges``
canaries independently with probability 1/2 (by default mislabelled training
examples: the points a model can only fit by memorising them; or held-out natural
examples; or crafted out-of-distribution images). Every model scores
every canary. Half of the canaries (the calibration set) choose the attack's
decision threshold; only the other half are counted, so the threshold never sees
the points it is judged on. All (model, canary) guesses are pooled into one count
of false positives and negatives, as in Zanella-Béguelin et al.: this treats the
guesses as independent, which is a heuristic (canaries share a model), and the
report says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpplat.audits.backends import BACKENDS, make_backend
from dpplat.audits.estimate import estimate_epsilon
from dpplat.audits.one_run import one_run_lower_bound
from dpplat.audits.roc import roc_curve
from dpplat.audits.scores import MEMBERSHIP_SCORES, attack_scores
from dpplat.config_checks import check_choice, check_range, check_types
from dpplat.data import canonical_dataset, check_dataset_name, dataset_info
from dpplat.training import TrainConfig

# crafted: out-of-distribution noise images (crafted_images); clipbkd: images along the data's directions of least
# variance (clipbkd_images)
CANARIES = ("mislabeled", "natural", "crafted", "clipbkd")
INDEPENDENCE_NOTE = (
    "Guesses from all canaries of all models are pooled as if independent (the heuristic of "
    "Zanella-Béguelin et al. 2023); canaries of one model share its training run, so the interval "
    "is an estimate under that assumption, not a worst-case bound."
)


@dataclass
class MIAConfig:
    """An audit plan; ``audits/*.toml`` files hold the same keys (a ``[train]`` table for training)."""

    dataset: str = "mnist"
    epsilon: float = 8.0  # claimed epsilon; math.inf trains without DP (the reference)
    delta: float = 1e-5
    models: int = 16
    challenges: int = 256
    base_size: int = 1000
    canary: str = "mislabeled"
    attack: str = "loss"
    confidence: float = 0.95
    calibration_fraction: float = 0.5
    seed: int = 0
    backend: str = "local"
    workers: int | None = None
    data_dir: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        model="mlp", epochs=10, batch_size=128, lr=0.5, momentum=0.9, max_grad_norm=1.0, accountant="rdp"))

    def __post_init__(self) -> None:
        self.dataset = canonical_dataset(self.dataset)
        self.validate()

    def validate(self) -> None:
        """Types and ranges of every key; run when the config is built and again before an audit starts."""
        check_types(self, allow_infinite=("epsilon",))
        if self.models < 1 or self.challenges < 4:
            raise ValueError("an audit needs at least 1 model and 4 challenges (use --models 16 --challenges 256).")
        check_choice("attack", self.attack, MEMBERSHIP_SCORES)
        check_choice("canary", self.canary, CANARIES)
        check_choice("backend", self.backend, BACKENDS)
        check_dataset_name(self.dataset)
        check_range("calibration_fraction", self.calibration_fraction, low=0, high=1, low_open=True, high_open=True)
        check_range("confidence", self.confidence, low=0, high=1, low_open=True, high_open=True)
        check_range("epsilon", self.epsilon, low=0, low_open=True)
        check_range("delta", self.delta, low=0, high=1, low_open=True, high_open=True)
        check_range("base_size", self.base_size, low=1)
        check_range("seed", self.seed, low=0)
        check_range("workers", self.workers, low=1)
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a table of training settings, got {self.train!r}.")
        self.train.validate()

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def training_config(self) -> TrainConfig:
        t = dataclasses.replace(self.train, dataset=self.dataset, delta=self.delta, data_dir=self.data_dir)
        if self.private:
            t.epsilon = self.epsilon
        return t


def _job_key(config: MIAConfig, index: int, mask: np.ndarray) -> str:
    payload = json.dumps({"cfg": dataclasses.asdict(config.training_config()), "eps": str(config.epsilon),
                          "base": config.base_size, "canary": config.canary, "seed": config.seed,
                          "challenges": config.challenges, "index": index, "mask": mask.astype(int).tolist()},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def crafted_images(x, count: int, seed: int):
    """Out-of-distribution canaries: uniform noise images in the data's normalised range, one per canary.

    No training image resembles them, so the model's output on one depends on little but whether it
    was trained on it: the input-space analogue of a gradient canary (as in Yoon et al. 2024's
    crafted canaries). Drawn from a seed, so every model of the game sees the same images.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    low, high = x.amin(dim=0, keepdim=True), x.amax(dim=0, keepdim=True)
    return low + (high - low) * torch.rand((count, *x.shape[1:]), generator=generator)


def clipbkd_images(x, count: int, seed: int, sample: int = 10_000):
    """Adversarially crafted canaries (Jagielski, Ullman & Oprea 2020's ClipBKD): the data's mean plus one of its
    ``count`` directions of least variance each, as long as a typical image is far from the mean.

    Real images barely move along those directions, so a canary's gradient points where no real example's does:
    the clipped and noised update carries it almost alone, the worst case a final-model audit can build without
    training on purpose-made gradients. The directions come from an SVD of up to ``sample`` training images drawn
    with ``seed``, so every model of the game sees the same canaries.
    """
    import torch

    flat = x.reshape(len(x), -1).double()
    if count > flat.shape[1]:
        raise ValueError(f"clipbkd canaries take one direction each: {count} challenges exceed the "
                         f"{flat.shape[1]} dimensions of an image; use at most {flat.shape[1]} challenges.")
    rows = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:sample]
    mean = flat[rows].mean(0)
    centred = flat[rows] - mean
    _, _, vh = torch.linalg.svd(centred, full_matrices=True)
    directions = vh[-count:].flip(0)  # least variance first
    length = centred.norm(dim=1).median()
    return (mean + length * directions).to(x.dtype).reshape(count, *x.shape[1:])


def canary_images(x, challenge_idx, canary: str, count: int, seed: int):
    """The game's canary images: training images (mislabelled or natural), or images made for the audit."""
    if canary == "crafted":
        return crafted_images(x, count, seed)
    if canary == "clipbkd":
        return clipbkd_images(x, count, seed)
    return x[challenge_idx]


def train_and_score(job: dict) -> str:
    """One model of the game: train on base + included canaries, score every canary; writes an .npz."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    from dpplat.data import load_dataset
    from dpplat.training import fit

    torch.set_num_threads(job.get("threads", torch.get_num_threads()))
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # Opacus's RDP hint
    full = load_dataset(job["dataset"], "train", data_dir=job["data_dir"])
    x, y = full.tensors
    canary_x = canary_images(x, job["challenge_idx"], job.get("canary", "mislabeled"), len(job["challenge_idx"]),
                             job.get("canary_seed", 0))
    canary_y = torch.as_tensor(job["challenge_labels"])
    included = torch.as_tensor(job["mask"], dtype=torch.bool)
    train_x = torch.cat([x[job["base_idx"]], canary_x[included]])
    train_y = torch.cat([y[job["base_idx"]], canary_y[included]])
    config = TrainConfig(**job["train"])
    config.seed = job["seed"]
    model = fit(config, TensorDataset(train_x, train_y), private=job["private"])
    model.eval()
    with torch.no_grad():
        logits = model(canary_x)
        loss = F.cross_entropy(logits, canary_y, reduction="none").numpy()
        logits = logits.double()
        prob = logits.softmax(1).gather(1, canary_y[:, None]).squeeze(1).numpy()
        # LiRA's logit-scaled confidence log(p / (1 - p)) = z_y - logsumexp_{j != y} z_j, stable when p -> 1.
        others = logits.scatter(1, canary_y[:, None], float("-inf"))
        phi = (logits.gather(1, canary_y[:, None]).squeeze(1) - others.logsumexp(1)).numpy()
    tmp = Path(job["out"] + ".tmp.npz")
    np.savez(tmp, loss=loss, prob=prob, phi=phi, key=np.array(job["key"]))
    tmp.replace(job["out"])
    return job["out"]


def _finished(path: Path, key: str, challenges: int, progress=None) -> bool:
    """Whether ``path`` holds the scores of the job ``key``: readable, carrying that key, one score per canary.
    A file that fails is moved aside (``.bad``) and the model is trained again."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as saved:
            ok = str(saved["key"]) == key and all(saved[name].shape == (challenges,) for name in ("loss", "prob", "phi"))
    except Exception:  # noqa: BLE001 - any unreadable file is simply redone
        ok = False
    if not ok:
        path.replace(path.with_suffix(".bad"))
        if progress:
            progress(f"{path.name} is not this audit's finished model (truncated, corrupt or another job's); "
                     f"moved aside to {path.with_suffix('.bad').name}, training it again")
    return ok


def choose_threshold(scores: np.ndarray, members: np.ndarray, delta: float, confidence: float) -> float:
    """The threshold whose calibration guesses give the highest Clopper–Pearson lower bound on epsilon.

    A lower bound (not a point estimate) penalises extreme thresholds that rest on a handful
    of guesses; when no threshold proves anything, the median score (balanced guesses) is used.
    """
    candidates = np.unique(np.quantile(scores, np.linspace(0, 1, 101)))
    neg, pos = int((~members).sum()), int(members.sum())
    best, best_bound = float(np.median(scores)), 0.0
    for t in candidates:
        guess = scores >= t
        fp, fn = int((guess & ~members).sum()), int((~guess & members).sum())
        bound = estimate_epsilon(fp, fn, neg, pos, delta, confidence, method="clopper-pearson").lower_bound
        if bound > best_bound:
            best, best_bound = float(t), bound
    return best


def run_mia(config: MIAConfig, workdir: str | Path, *, progress=None) -> dict:
    """Play the canary game; returns counts, the three epsilon estimates and every attack's ROC."""
    from dpplat.data import load_arrays

    config.validate()
    started = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    labels = load_arrays(config.dataset, config.data_dir)["y_train"].astype(np.int64)
    if config.base_size + config.challenges > len(labels):
        raise ValueError(f"base_size + challenges exceeds the {len(labels)} training examples of {config.dataset}.")
    order = rng.permutation(len(labels))
    base_idx = order[: config.base_size]
    challenge_idx = order[config.base_size : config.base_size + config.challenges]
    challenge_labels = labels[challenge_idx].copy()
    if config.canary in ("mislabeled", "crafted", "clipbkd"):  # an image made for the audit gets a random label too
        classes = len(dataset_info(config.dataset, config.data_dir).classes)
        challenge_labels = (challenge_labels + rng.integers(1, classes, len(challenge_labels))) % classes
    members = rng.random((config.models, config.challenges)) < 0.5
    train_dict = dataclasses.asdict(config.training_config())
    jobs, outs = [], []
    for j in range(config.models):
        key = _job_key(config, j, members[j])
        out = workdir / f"model-{j:03d}-{key}.npz"
        outs.append(out)
        if not _finished(out, key, config.challenges, progress):  # finished models are never retrained
            jobs.append({"key": key, "dataset": config.dataset, "data_dir": config.data_dir, "base_idx": base_idx.tolist(),
                         "challenge_idx": challenge_idx.tolist(), "challenge_labels": challenge_labels.tolist(),
                         "mask": members[j].tolist(), "train": train_dict, "private": config.private,
                         "seed": config.seed * 100_003 + j, "out": str(out),
                         "canary": config.canary, "canary_seed": config.seed + 7})
    if progress:
        progress(f"training {len(jobs)} of {config.models} models ({config.models - len(jobs)} already done)")
    make_backend(config.backend, workers=config.workers).map(train_and_score, jobs)
    arrays = [np.load(p) for p in outs]
    loss = np.stack([a["loss"] for a in arrays])
    prob = np.stack([a["prob"] for a in arrays])
    phi = np.stack([a["phi"] for a in arrays])

    calibration = np.zeros(config.challenges, bool)
    calibration[rng.permutation(config.challenges)[: int(config.challenges * config.calibration_fraction)]] = True
    report = ~calibration
    attacks = {}
    for attack in MEMBERSHIP_SCORES:
        if attack.startswith("lira") and config.models < 3:
            continue
        scores = attack_scores(attack, loss, prob, phi, members)
        attacks[attack] = {"scores": scores, "roc": roc_curve(scores[:, report].ravel(), members[:, report].ravel())}

    scores = attacks[config.attack]["scores"]
    threshold = choose_threshold(scores[:, calibration].ravel(), members[:, calibration].ravel(), config.delta,
                                  config.confidence)
    guess = scores[:, report].ravel() >= threshold
    truth = members[:, report].ravel()
    fp, fn = int((guess & ~truth).sum()), int((~guess & truth).sum())
    negatives, positives = int((~truth).sum()), int(truth.sum())
    bayes = estimate_epsilon(fp, fn, negatives, positives, config.delta, config.confidence, method="bayes")
    cp = estimate_epsilon(fp, fn, negatives, positives, config.delta, config.confidence, method="clopper-pearson")
    one_run = one_run_lower_bound(truth.size, truth.size, int((guess == truth).sum()), config.delta, config.confidence)
    np.savez(workdir / "scores.npz", loss=loss, prob=prob, phi=phi, members=members, calibration=calibration,
             **{f"scores_{a}": v["scores"] for a, v in attacks.items()})
    claimed = config.epsilon
    return {
        "claimed_epsilon": claimed if math.isfinite(claimed) else None,
        "delta": config.delta, "confidence": config.confidence, "attack": config.attack, "canary": config.canary,
        "models": config.models, "challenges": config.challenges, "reported_challenges": int(report.sum()),
        "threshold": threshold,
        "counts": {"fp": fp, "fn": fn, "negatives": negatives, "positives": positives},
        "bayes": bayes.as_dict(), "clopper_pearson": cp.as_dict(),
        "one_run": {"lower_bound": one_run, "m": int(truth.size), "r": int(truth.size), "v": int((guess == truth).sum())},
        "roc": {a: v["roc"].summary() for a, v in attacks.items()},
        "exceeds_claim": bool(math.isfinite(claimed) and max(bayes.lower_bound, cp.lower_bound, one_run) > claimed),
        "independence_note": INDEPENDENCE_NOTE,
        "seconds": time.time() - started,
        "scores_path": str(workdir / "scores.npz"),
    }


def format_report(results: dict) -> str:
    b, cp, one = results["bayes"], results["clopper_pearson"], results["one_run"]
    claimed = results["claimed_epsilon"]
    c = results["counts"]
    pct = f"{results['confidence']:.0%}"
    lines = [
        "Privacy audit (membership inference, canary game)",
        "--------------------------------------------------",
        f"Claimed epsilon: {'infinity (non-private)' if claimed is None else f'{claimed:g}'}   delta: {results['delta']:g}   confidence: {pct}",
        f"Models trained: {results['models']}   canaries: {results['challenges']} ({results['reported_challenges']} counted, "
        f"the rest chose the threshold)   canary kind: {results['canary']}   attack: {results['attack']}",
        f"Counts: FP {c['fp']} of {c['negatives']} non-members, FN {c['fn']} of {c['positives']} members",
        f"Bayesian ({b['prior']} prior): epsilon in [{b['low']:.3f}, {b['high']:.3f}] ({pct} credible), lower bound {b['lower_bound']:.3f}",
        f"Clopper-Pearson:        epsilon in [{cp['low']:.3f}, {cp['high']:.3f}] ({pct}), lower bound {cp['lower_bound']:.3f}",
        f"One-run (Steinke et al. 2023): lower bound {one['lower_bound']:.3f}",
        "AUC: " + ", ".join(f"{a} {r['auc']:.3f} (TPR@1%FPR {r['tpr_at_1pct_fpr']:.3f})" for a, r in results["roc"].items()),
        results["independence_note"],
    ]
    if results["exceeds_claim"]:
        lines.append("!!! WARNING: an empirical lower bound EXCEEDS the claimed epsilon. This means a bug in training "
                     "or accounting, or a broken guarantee. Investigate before trusting this model. !!!")
    elif claimed is not None:
        lines.append(f"The empirical lower bounds are below the claimed epsilon = {claimed:g}: consistent with the guarantee.")
    return "\n".join(lines)
