"""Step time and extra peak memory of DP-SGD engines, as ratios to non-private PyTorch.

Methods: non-private PyTorch (the baseline), dpplat per-layer (and the same without
drawing noise, to separate the cost of the Gaussian noise from clipping), dpplat flat, Opacus
hooks (flat and per-layer) and Opacus ghost clipping. Models: a 4-conv CNN
(32-32-64-64 + Linear on 32x32x3, B=256), a Linear-heavy MLP (3072-1024-1024-1024-10,
B=256) and a small transformer encoder block (Embedding + LayerNorm + Linear
attention/MLP, sequence 128); and a GPT-2-architecture language model from ``transformers``
(6 layers, d = 512, 8 heads, sequence 256, a vocabulary of 8,192, B = 4, untied head), trained
whole (``gpt2``) or through rank-8 LoRA adapters on its frozen base (``gpt2-lora``); for a GPU, GPT-2 small's
shape (124M parameters: 12 layers, d = 768, 12 heads, sequence 1024, a vocabulary of 50,257, B = 8), whole
(``gpt2-small``) and with LoRA (``gpt2-small-lora``), randomly initialised (no download). ``--dtype bf16``
runs every method's forward pass and loss under bf16 autocast. A method that cannot run a model says why in
its row. The throughput column is tokens a second for the language models, examples a second otherwise.
``zoo:NAME`` is the zoo's model NAME as trained on MNIST (28x28x1, B = 2048), e.g. ``zoo:cnn,zoo:c4-cnn``; for a
model with a fixed stem (the ScatterNets), the step is its head's on the stem's output, as training caches it.
"dpplat per-layer, one-thread noise" draws the noise as torch's generator does, on one thread, to show what
the engine's block-parallel draw saves.

Time: all methods live in one process and are stepped in interleaved rounds (so
drift in machine load hits them alike); we report medians. Memory: each method runs
a few steps in its own spawned child process; extra peak memory is the child's peak RSS
(VmHWM, reset after building the model and batch) minus its RSS at that point.

    python benchmarks/engine.py [--rounds 7] [--models cnn,mlp,transformer] [--device cpu|cuda]
    python benchmarks/engine.py --rounds 3 --models gpt2,gpt2-lora   # seconds a step on a 2-core CPU
    python benchmarks/engine.py --rounds 5 --models gpt2 --methods "non-private" "dpplat per-layer" \
        "dpplat per-layer, one-thread noise" "dpplat per-layer, no noise"     # the noise draw's share
    OMP_NUM_THREADS=1 python benchmarks/engine.py --rounds 5 --models zoo:cnn,zoo:c4-cnn \
        --methods "non-private" "dpplat per-layer"                            # the zoo's MNIST models
    python benchmarks/engine.py --compile      # adds torch.compile rows (non-private and dpplat per-layer)
    python benchmarks/engine.py --device cuda --dtype bf16 --rounds 3 --models gpt2-small-lora,gpt2-small \
        --methods "non-private" "dpplat per-layer" "opacus ghost"        # FlashDP's setting, on a GPU
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import statistics
import time
import warnings
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpplat import PrivacyEngine, models
from dpplat.engine import noise
from dpplat.models.scatnet import FixedStemClassifier

warnings.filterwarnings("ignore")


class Block(nn.Module):
    """Pre-norm encoder block from Linear, LayerNorm and Embedding only (no fused attention params)."""

    def __init__(self, vocab=1000, d=128, heads=4, classes=10):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, classes)
        self.heads = heads

    def forward(self, tokens):
        h = self.embed(tokens)
        B, T, D = h.shape
        a = self.norm1(h)
        split = lambda t: t.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        att = F.scaled_dot_product_attention(split(self.q(a)), split(self.k(a)), split(self.v(a)))
        h = h + self.o(att.transpose(1, 2).reshape(B, T, D))
        h = h + self.down(F.gelu(self.up(self.norm2(h))))
        return self.head(h.mean(1))


class CausalLM(nn.Module):
    """A GPT-2 ``transformers`` model whose forward takes token ids and gives (B, vocab, T) logits.

    Position ids are expanded to one row per sequence: the engine refuses an input the batch shares."""

    def __init__(self, lora_rank: int = 0, vocab: int = 8192, d: int = 512, layers: int = 6, seq: int = 256,
                 heads: int = 8):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        from dpplat.models.lora import add_lora

        config = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=d, n_layer=layers, n_head=heads,
                            bos_token_id=vocab - 1, eos_token_id=vocab - 1, tie_word_embeddings=False)
        self.lm = GPT2LMHeadModel(config)
        if lora_rank:
            add_lora(self.lm, rank=lora_rank)

    def forward(self, ids):
        # contiguous: Opacus's embedding norms .view() their input ids
        positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1).contiguous()
        return self.lm(input_ids=ids.contiguous(), position_ids=positions).logits.transpose(1, 2)


class SequenceCrossEntropy(nn.Module):
    """Cross-entropy over (B, vocab, T) logits in which each sequence is one example.

    ``reduction="none"`` gives each sequence's token mean, one loss per example: the shape Opacus's ghost clipping
    asks of the criterion it wraps. ``"mean"`` averages those (the token mean, all sequences being one length)."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sequence = F.cross_entropy(logits, targets, reduction="none").mean(dim=1)
        if self.reduction == "none":
            return per_sequence
        return per_sequence.mean() if self.reduction == "mean" else per_sequence.sum()


# the language models' shapes: the CPU's small GPT-2 and GPT-2 small (124M) for a GPU
LANGUAGE_MODELS = {
    "gpt2": dict(vocab=8192, d=512, layers=6, heads=8, seq=256, batch=4),
    "gpt2-small": dict(vocab=50257, d=768, layers=12, heads=12, seq=1024, batch=8),
}


def tokens_per_step(name: str) -> int | None:
    shape = LANGUAGE_MODELS.get(name.removesuffix("-lora"))
    return shape["batch"] * shape["seq"] if shape else None


def build(name: str):
    torch.manual_seed(0)
    if name.removesuffix("-lora") in LANGUAGE_MODELS:
        shape = dict(LANGUAGE_MODELS[name.removesuffix("-lora")])
        batch = shape.pop("batch")
        model = CausalLM(lora_rank=8 if name.endswith("-lora") else 0, **shape)
        tokens = torch.randint(0, shape["vocab"], (batch, shape["seq"] + 1))
        return model, tokens[:, :-1], tokens[:, 1:]
    if name.startswith("zoo:"):
        model, images = models.create(name.removeprefix("zoo:")), torch.randn(2048, 1, 28, 28)
        if isinstance(model, FixedStemClassifier):  # training computes the stem once per image: time the head
            with torch.no_grad():
                model, images = model.head, model.stem(images)
        return model, images, torch.randint(0, 10, (2048,))
    if name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
        )
        return model, torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        return model, torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    if name == "transformer":
        return Block(), torch.randint(0, 1000, (32, 128)), torch.randint(0, 10, (32,))
    raise ValueError(name)


METHODS = ["non-private", "dpplat per-layer", "dpplat per-layer, one-thread noise", "dpplat per-layer, no noise", "dpplat flat", "opacus hooks flat", "opacus hooks per-layer", "opacus ghost"]
COMPILED = ["non-private (compiled)", "dpplat per-layer (compiled)"]  # --compile: torch.compile(model), inductor


def make_method(method: str, model_name: str, device: str, dtype: str = "float32"):
    """A closure that runs one training step of ``method`` on a fixed batch."""
    model, x, y = build(model_name)
    model, x, y = model.to(device), x.to(device), y.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=len(x))
    criterion = SequenceCrossEntropy() if model_name.startswith("gpt2") else nn.CrossEntropyLoss()
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    sigma, C = 1.0, 1.0
    compiled = method.endswith(" (compiled)")
    noise_draw = _one_thread_noise if method.endswith(", one-thread noise") else nullcontext
    method = method.removesuffix(" (compiled)")
    if method == "non-private":
        pass
    elif method.startswith("dpplat"):
        clipping = "per_layer" if "per-layer" in method else "flat"
        model, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=optimizer, data_loader=loader, max_grad_norm=C,
            noise_multiplier=0.0 if "no noise" in method else sigma,
            clipping=clipping, poisson_sampling=False)
    else:
        from opacus import PrivacyEngine as OpacusEngine

        engine = OpacusEngine(accountant="rdp")
        if method == "opacus ghost":
            model, optimizer, criterion, _ = engine.make_private(
                module=model, optimizer=optimizer, criterion=criterion, data_loader=loader, noise_multiplier=sigma,
                max_grad_norm=C, poisson_sampling=False, grad_sample_mode="ghost")
        else:
            per_layer = "per-layer" in method
            n_params = sum(1 for p in model.parameters() if p.requires_grad)
            bound = [C / math.sqrt(n_params)] * n_params if per_layer else C
            model, optimizer, _ = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma, max_grad_norm=bound,
                clipping="per_layer" if per_layer else "flat", poisson_sampling=False, grad_sample_mode="hooks")

    if compiled:
        model = torch.compile(model)

    def step():
        optimizer.zero_grad()
        with autocast:
            loss = criterion(model(x), y)
        loss.backward()
        with noise_draw():
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


@contextmanager
def _one_thread_noise():
    """The engine's noise drawn tensor by tensor on one thread, as torch's generator draws it."""
    threshold = noise._PARALLEL_MIN
    noise._PARALLEL_MIN = math.inf
    try:
        yield
    finally:
        noise._PARALLEL_MIN = threshold


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _memory_child(method, model_name, device, dtype, queue):
    try:
        step = make_method(method, model_name, device, dtype)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            base = _status_mb("VmRSS:")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS high-water mark to the current RSS
        for _ in range(3):
            step()
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _status_mb("VmHWM:")
        queue.put(peak - base)
    except Exception as err:  # a method that cannot run this model is reported, not fatal
        queue.put(f"n/a ({type(err).__name__}: {str(err)[:60]})")


def extra_memory(methods, model_name, device, dtype) -> dict[str, float | str]:
    """Each method's extra peak memory, measured in its own child process.

    CPU children run one at a time (peak RSS needs a quiet machine). GPU children run together:
    each reads its own CUDA allocator's peak, which the others do not touch, and CUDA start-up
    costs seconds a process.
    """
    ctx = mp.get_context("spawn")  # fork after torch started its thread pool can deadlock
    results = {}
    for group in [list(methods)] if device == "cuda" else [[m] for m in methods]:
        children = {m: (ctx.Process(target=_memory_child, args=(m, model_name, device, dtype, q)), q)
                    for m, q in ((m, ctx.Queue()) for m in group)}
        for proc, _ in children.values():
            proc.start()
        for m, (proc, queue) in children.items():
            proc.join()
            results[m] = queue.get() if not queue.empty() else "n/a (child failed)"
    return results


def time_methods(methods, model_name, device, rounds, dtype, steps_per_round=2):
    steps, times = {}, {m: [] for m in methods}
    for m in methods:
        try:
            steps[m] = make_method(m, model_name, device, dtype)
            steps[m]()  # warm-up
        except Exception as err:
            steps[m] = f"n/a ({type(err).__name__}: {str(err)[:60]})"
    for _ in range(rounds):
        for m in methods:
            if callable(steps[m]):
                t = time.perf_counter()
                for _ in range(steps_per_round):
                    steps[m]()
                times[m].append((time.perf_counter() - t) / steps_per_round)
    return {m: statistics.median(times[m]) if times[m] else steps[m] for m in methods}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default="cnn,mlp,transformer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bf16"), default="float32",
                        help="bf16: every method's forward pass and loss under bf16 autocast")
    parser.add_argument("--compile", action="store_true",
                        help="also time non-private and dpplat per-layer under torch.compile (after a warm-up step)")
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of the methods, each quoted (default: all)")
    args = parser.parse_args(argv)
    methods = args.methods or METHODS + (COMPILED if args.compile else [])
    if "non-private" not in methods:
        parser.error("--methods must include non-private, the baseline of every ratio")
    print(f"machine: {machine()}" + (f", GPU {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    print(f"device: {args.device}, {args.dtype}; medians over {args.rounds} interleaved rounds of 2 steps\n")
    print("| model | method | step time (ms) | time / non-private | throughput (/s) | extra peak memory (MB) "
          "| memory / non-private |")
    print("|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        times = time_methods(methods, model_name, args.device, args.rounds, args.dtype)
        mems = extra_memory(methods, model_name, args.device, args.dtype)
        per_step = tokens_per_step(model_name) or len(build(model_name)[1])
        base_t, base_m = times["non-private"], mems["non-private"]
        for m in methods:
            t, mem = times[m], mems[m]
            t_txt = (f"{t * 1000:.1f} | {t / base_t:.2f}x | {per_step / t:,.0f}" if isinstance(t, float)
                     else f"{t} | - | -")
            m_txt = f"{mem:.0f} | {mem / base_m:.2f}x" if isinstance(mem, float) and base_m > 0 else f"{mem} | -"
            print(f"| {model_name} | {m} | {t_txt} | {m_txt} |", flush=True)


if __name__ == "__main__":
    main()
