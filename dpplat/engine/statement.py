"""The plain-language privacy statement, like TF Privacy's ``compute_dp_sgd_privacy_statement``."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PrivacyStatement:
    dataset_size: int
    sample_rate: float
    noise_multiplier: float
    steps: int
    accountant: str
    epsilon: float
    delta: float
    clipping: str
    max_grad_norm: float
    poisson_sampling: bool
    releases: tuple = ()  # (noise multiplier, sample rate, count) of Gaussian releases composed before training
    secure_mode: bool = False  # noise and sampling from the OS CSPRNG (else torch's seeded generator)

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0 and self.epsilon < float("inf")

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        epochs = self.steps * self.sample_rate
        sampling = "Poisson sampling" if self.poisson_sampling else "shuffled fixed-size batches (accounted as Poisson, as Opacus does)"
        randomness = ("secure mode: noise and sampling from the OS CSPRNG" if self.secure_mode else
                      "secure mode off: noise and sampling from torch's seeded generator (reproducible, not "
                      "cryptographically secure)")
        if not self.private:
            return "\n".join([
                "NOT DIFFERENTIALLY PRIVATE",
                "--------------------------",
                f"Noise multiplier sigma: {self.noise_multiplier:.4g}: no noise was added, so epsilon is infinite and",
                "this training gives NO privacy guarantee. Gradients were clipped "
                f"({self.clipping}, C = {self.max_grad_norm:.4g}); that alone protects nothing.",
                f"Training examples (N): {self.dataset_size}; steps: {self.steps} ({epochs:.2f} epochs).",
            ])
        return "\n".join([
            "DP-SGD privacy statement",
            "------------------------",
            f"Training examples (N): {self.dataset_size}",
            f"Sampling: {sampling}, rate q = {self.sample_rate:.6g} (expected batch {self.sample_rate * self.dataset_size:.1f})",
            f"Noise multiplier sigma: {self.noise_multiplier:.4g}; clipping: {self.clipping}, total sensitivity C = {self.max_grad_norm:.4g}",
            f"Steps: {self.steps} ({epochs:.2f} epochs)",
            f"Accountant: {self.accountant.upper()} (Opacus), epsilon reported as its upper bound",
            f"Randomness: {randomness}",
            *[f"Composed before training: {count} Gaussian release(s) of data statistics, noise multiplier "
              f"{sigma:.4g}, sample rate {rate:.4g}" for sigma, rate, count in self.releases],
            "",
            f"Guarantee: the training algorithm satisfies ({self.epsilon:.3f}, {self.delta:.1e})-differential privacy",
            "under add/remove-one-example adjacency: adding or removing any single training example changes the",
            f"probability of any outcome by at most a factor e^{self.epsilon:.3f}, except with probability {self.delta:.1e}.",
            "It covers the released model and every intermediate model; it does not cover hyper-parameter tuning",
            "on the private data, or examples that appear more than once.",
        ])
