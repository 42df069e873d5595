"""The stateful-defense contract shared by Blacklight, PIHA and Stateful Detection.

A defense sits in front of a classifier and keeps a history of one user's queries.
Each query is answered in order: it is compared with the history, and if it is too
similar to an earlier query the response policy decides what the user sees. Only
accepted queries enter the history (as in Feng et al.'s reference harness), so a
rejected probe does not poison later ones.

Subclasses supply three things: ``_digest`` (a batch of images -> what is stored),
``_lookup`` (is digest ``i`` a hit against the history, and which stored query did it
match) and ``_remember``/``_clear`` for the history itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from dpplat.audits.registry import Registry

POLICIES = ("reject", "silent", "flush", "ban-count")


@dataclass
class Response:
    """What one batch of queries returned: log-probabilities (softmax scores, kept in log space so that
    confident answers do not saturate to 0 and 1) and which queries were visibly rejected."""

    log_probs: torch.Tensor
    rejected: torch.Tensor


@dataclass
class DefenseStats:
    """Counters since the last ``reset()``; ``first_hit`` is how many queries a ban-on-first-hit policy allows."""

    queries: int = 0
    hits: int = 0
    rejections: int = 0
    first_hit: int | None = None

    def queries_if_banned(self) -> int:
        return self.queries if self.first_hit is None else self.first_hit


@dataclass
class Calibration:
    """A defense's false-positive rate on benign images, measured when it is set up."""

    defense: str
    benign_images: int
    false_positives: int
    threshold: float
    details: dict = field(default_factory=dict)

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / max(self.benign_images, 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "false_positive_rate": self.false_positive_rate}


def check_images(x: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Refuse what is not a batch of images in [0, 1]: attacks and defenses work in pixel space."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"queries must be a torch.Tensor of images, got {type(x).__name__}.")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"queries must be images (N, C, H, W) or one image (C, H, W), got shape {tuple(x.shape)}.")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"queries have shape {tuple(x.shape[1:])} per image but this model takes {tuple(shape)}.")
    if x.numel() and (x.min() < 0 or x.max() > 1 or not torch.isfinite(x).all()):
        raise ValueError("queries must be pixel values in [0, 1] (unnormalised); clamp or rescale them first.")
    return x


class StatefulDefense:
    """A classifier behind a query-history detector; ``query`` answers a batch in order.

    ``model`` maps pixel images in [0, 1] to logits. ``policy`` is what a detected query
    gets: "reject" (flagged, answered from the matched query's cached output), "silent"
    (real answer, hit only counted), "flush" (flagged, then the history is cleared), or
    "ban-count" (real answer; ``stats.first_hit`` says when a ban would have fallen).
    """

    name = "base"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], *, input_shape: tuple[int, int, int],
                 policy: str = "reject", seed: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown response policy {policy!r}; choose one of {POLICIES}.")
        self.model = model
        self.input_shape = tuple(input_shape)
        self.policy = policy
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.stats = DefenseStats()
        self._outputs: list[torch.Tensor] = []

    # ---- what subclasses provide -------------------------------------------------
    def _digest(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def _begin(self, digests: Any) -> None:
        """Called once per batch before the sequential lookups (precompute against the history)."""

    def _lookup(self, digests: Any, i: int) -> tuple[bool, int | None]:
        raise NotImplementedError

    def _remember(self, digests: Any, i: int) -> None:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    # ---- the contract ------------------------------------------------------------
    @property
    def history_size(self) -> int:
        return len(self._outputs)

    def reseed(self, seed: int | list[int]) -> None:
        """Restart the defense's random draws (a salted defense's salt at the next ``reset``) from ``seed``.

        Why: each reset draws its salt from the same generator, so without this an image's salt depends
        on how many images the defense saw before it, and an audit's result on how its images were split
        into jobs; the audit reseeds per image with (seed, image index).
        """
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Forget the user: history, counters, and (for salted defenses) draw a fresh salt."""
        self._clear()
        self._outputs = []
        self.stats = DefenseStats()

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> Response:
        x = check_images(x, self.input_shape)
        log_probs = torch.log_softmax(self.model(x).float(), dim=1)
        rejected = torch.zeros(len(x), dtype=torch.bool)
        digests = self._digest(x)
        self._begin(digests)
        for i in range(len(x)):
            self.stats.queries += 1
            hit, matched = self._lookup(digests, i)
            if not hit:
                self._remember(digests, i)
                self._outputs.append(log_probs[i])
                continue
            self.stats.hits += 1
            if self.stats.first_hit is None:
                self.stats.first_hit = self.stats.queries - 1
            if self.policy in ("reject", "flush"):
                rejected[i] = True
                self.stats.rejections += 1
                if matched is not None and matched < len(self._outputs):
                    log_probs[i] = self._outputs[matched]
                if self.policy == "flush":
                    self._clear()
                    self._outputs = []
                    self._begin(digests)
        return Response(log_probs, rejected)

    def calibrate(self, benign: torch.Tensor, batch_size: int = 250) -> Calibration:
        """Feed distinct benign images through one history and count how many are flagged."""
        self.reset()
        for start in range(0, len(benign), batch_size):
            self.query(benign[start:start + batch_size])
        hits = self.stats.hits
        result = Calibration(self.name, len(benign), hits, self.threshold)
        self.reset()
        return result

    @property
    def threshold(self) -> float:
        return float("nan")


DEFENSES: Registry[type[StatefulDefense]] = Registry("defense")


def register_defense(name: str):
    """Class decorator: make a defense available to ``create_defense`` and the CLI under ``name``."""
    return DEFENSES.register(name)


def available_defenses() -> list[str]:
    return DEFENSES.names()


def create_defense(name: str, model: Callable, *, input_shape: tuple[int, int, int], **kwargs) -> StatefulDefense:
    cls = DEFENSES.get(name)
    return cls(model, input_shape=input_shape, **kwargs)
