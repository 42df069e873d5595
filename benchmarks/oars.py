"""Defense-audit benchmark: does OARS break the stateful defenses that stop standard attacks?

Reproduces Feng et al.'s finding on our own trained model: against Blacklight and
PIHA, standard attacks should succeed on <= 10% of images and their OARS forms on
>= 90% (the paper's re-run reports OARS averages of 77.6% vs Blacklight, 87.7% vs
PIHA), within the query budget; with no defense every attack should succeed.
Also measures the defenses alone: queries per second of detection (the goal for
Blacklight is >= 1000/s) and false positives on 1,000 distinct benign test images.

    python benchmarks/oars.py --dataset mnist --images 10 --budget 100000 [--workers N]

Prints the table (dataset x defense x attack x mode -> success rate, mean queries,
mean rejections, queries a ban would allow) and writes it as Markdown to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from dpplat.audits.defense_audit import DefenseAuditConfig, _build_defense, load_target, prepare_target, \
    run_defense_audit
from dpplat.audits.target import pixel_images

ROOT = Path(__file__).resolve().parents[1]


def throughput(config: DefenseAuditConfig, workdir: Path, queries: int = 2000) -> list[dict]:
    """Detection alone (the model's forward pass excluded) and end to end, in queries per second."""
    torch.set_num_threads(1)
    model = load_target(workdir / "target.pt")
    x, _ = pixel_images(config.dataset, "test", subset=queries, seed=21, data_dir=config.data_dir)
    logits = model(x)
    rows = []
    for name in config.defenses:
        defense = _build_defense(name, model, config, workdir)
        for label, forward in (("detection only", lambda z: logits[:len(z)]), ("with the model", model)):
            defense.model = forward
            defense.reset()
            started = time.perf_counter()
            for i in range(0, queries, 100):
                defense.query(x[i:i + 100])
            rows.append({"defense": name, "measured": label, "queries_per_s": queries / (time.perf_counter() - started)})
    return rows


def markdown(results: dict, rates: list[dict], config: DefenseAuditConfig, wall: float) -> str:
    lines = [f"### {config.dataset}: {config.images} images, budget {config.budget:,} queries, "
             f"eps L-inf {config.eps('linf')}, eps L2/sqrt(d) {config.eps('l2')}",
             "", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {wall / 60:.1f} min wall time",
             "", "| defense | attack | mode | success | mean queries (successes) | median | mean rejections "
             "| queries if banned |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    for s in results["summaries"]:
        lines.append(f"| {s['defense']} | {s['attack']} | {s['mode']} | {100 * s['success_rate']:.0f}% | "
                     f"{fmt(s['mean_queries'])} | {fmt(s['median_queries'])} | {fmt(s['mean_rejections'])} | "
                     f"{fmt(s['mean_queries_if_banned'])} |")
    lines += ["", "| defense | false positives (1,000 benign test images) |", "|---|---|"]
    for name, cal in results["defenses"].items():
        lines.append(f"| {name} | {100 * cal['false_positive_rate']:.1f}% |")
    lines += ["", "| defense | measured | queries/s (one core) |", "|---|---|---|"]
    for r in rates:
        lines.append(f"| {r['defense']} | {r['measured']} | {r['queries_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--defenses", default="none,blacklight,piha,stateful-detection")
    parser.add_argument("--attacks", default="nes,square,hsja,qeba,surfree,boundary")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work-oars"))
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    config = DefenseAuditConfig(dataset=args.dataset, defenses=args.defenses.split(","),
                                attacks=args.attacks.split(","), images=args.images, budget=args.budget,
                                workers=args.workers)
    workdir = Path(args.workdir) / args.dataset
    started = time.time()
    results = run_defense_audit(config, workdir, progress=lambda m: print(m, flush=True))
    wall = time.time() - started
    rates = throughput(config, workdir)
    table = markdown(results, rates, config, wall)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({**results, "throughput": rates}, default=str))
    return results


if __name__ == "__main__":
    main()
