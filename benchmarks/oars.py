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

from dpplat.audits.defense_audit import DefenseAuditConfig, _build_defense, collect, load_target, plan_jobs, \
    run_defense_audit
from dpplat.audits.target import pixel_images

ROOT = Path(__file__).resolve().parents[1]


def throughput(config: DefenseAuditConfig, workdir: Path, queries: int = 2000, history: int = 0) -> list[dict]:
    """Detection alone (the model's forward pass excluded) and end to end, in queries per second.

    Without a trained target in ``workdir`` an untrained one of the same architecture is used:
    the cost of a forward pass does not depend on the weights. ``history`` distinct training
    images are stored first, because an attack's history grows to its query budget and a
    lookup that scans it slows down with it."""
    torch.set_num_threads(1)
    if (workdir / "target.pt").exists():
        model = load_target(workdir / "target.pt")
    else:
        from dpplat.audits.defense_audit import _target_config
        from dpplat.audits.target import PixelClassifier
        from dpplat.training import build_model

        model = PixelClassifier(build_model(_target_config(config)), config.dataset)
    x, _ = pixel_images(config.dataset, "test", subset=queries, seed=21, data_dir=config.data_dir)
    logits = model(x)
    stored = pixel_images(config.dataset, "train", subset=history, seed=22, data_dir=config.data_dir)[0] if history else x[:0]
    rows = []
    for name in config.defenses:
        defense = _build_defense(name, model, config, workdir)
        for label, forward in (("detection only", lambda z: logits[:len(z)]), ("with the model", model)):
            defense.model = lambda z: torch.zeros(len(z), logits.shape[1])
            defense.reset()
            for i in range(0, len(stored), 500):
                defense.query(stored[i:i + 500])
            defense.model, before = forward, defense.history_size
            started = time.perf_counter()
            for i in range(0, queries, 100):
                defense.query(x[i:i + 100])
            rows.append({"defense": name, "measured": label, "history": before,
                         "queries_per_s": queries / (time.perf_counter() - started)})
    return rows


def markdown(results: dict, rates: list[dict], config: DefenseAuditConfig, wall: float, summarised: bool) -> str:
    machine = ("tabulated from the job files of a run made elsewhere" if summarised else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {wall / 60:.1f} min wall time")
    lines = [f"### {config.dataset}: up to {config.images} images a cell, budget {config.budget:,} queries, "
             f"eps L-inf {config.eps('linf')}, eps L2/sqrt(d) {config.eps('l2')}"
             + "".join(f"; {name} {params}" for name, params in sorted(config.attack_params.items())),
             "", machine,
             "", "| defense | attack | mode | images | success | mean queries (successes) | median | mean rejections "
             "| queries if banned |", "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    for s in results["summaries"]:
        lines.append(f"| {s['defense']} | {s['attack']} | {s['mode']} | {s['images']} | {100 * s['success_rate']:.0f}% | "
                     f"{fmt(s['mean_queries'])} | {fmt(s['median_queries'])} | {fmt(s['mean_rejections'])} | "
                     f"{fmt(s['mean_queries_if_banned'])} |")
    if results["defenses"]:
        lines += ["", "| defense | false positives (1,000 benign test images) |", "|---|---|"]
        for name, cal in results["defenses"].items():
            lines.append(f"| {name} | {100 * cal['false_positive_rate']:.1f}% |")
    if rates:
        lines += ["", "| defense | measured | stored before | queries/s (one core) |", "|---|---|---|---|"]
        for r in rates:
            lines.append(f"| {r['defense']} | {r['measured']} | {r['history']:,} | {r['queries_per_s']:,.0f} |")
    return "\n".join(lines)


def attack_params(settings: list[str]) -> dict[str, dict]:
    """``["nes.tile=4", ...]`` as a plan's ``attack_params`` table: {"nes": {"tile": 4}}."""
    params: dict[str, dict] = {}
    for setting in settings:
        name, dot, rest = setting.partition(".")
        key, equals, value = rest.partition("=")
        if not (dot and equals and name and key):
            raise SystemExit(f"--attack-param {setting!r}: write ATTACK.KEY=VALUE, e.g. nes.tile=4.")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        params.setdefault(name, {})[key] = parsed
    return params


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--defenses", default="none,blacklight,piha,stateful-detection")
    parser.add_argument("--attacks", default="nes,square,hsja,qeba,surfree,boundary")
    parser.add_argument("--modes", default="standard,oars")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--skip-images", type=int, default=0,
                        help="leave out the first N images of the draw: --images 8 --skip-images 8 attacks the last 8 "
                             "of a 16-image audit, a sample disjoint from --images 8")
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work-oars"))
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    parser.add_argument("--workers-of-run", type=int, default=None,
                        help="with --summarise: the worker count the run used (it names the job files)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only measure the defenses' queries per second and false positives")
    parser.add_argument("--history", type=int, default=0,
                        help="with --throughput-only: store this many distinct training images first")
    parser.add_argument("--summarise", action="store_true",
                        help="only tabulate the job files already in --workdir (a run cut short), run nothing")
    parser.add_argument("--attack-param", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                        help="an attack's setting, as in a plan's [attack_params.ATTACK] table (repeatable), "
                             "e.g. nes.tile=4")
    args = parser.parse_args(argv)
    config = DefenseAuditConfig(dataset=args.dataset, defenses=args.defenses.split(","),
                                attacks=args.attacks.split(","), modes=args.modes.split(","), images=args.images,
                                skip_images=args.skip_images, budget=args.budget, workers=args.workers,
                                attack_params=attack_params(args.attack_param))
    workdir = Path(args.workdir) / args.dataset
    started = time.time()
    if args.throughput_only:
        workdir.mkdir(parents=True, exist_ok=True)
        rates = throughput(config, workdir, history=args.history)
        for r in rates:
            print(f"{config.dataset:<10}{r['defense']:<20}{r['measured']:<16}{r['history']:>8,} stored"
                  f"{r['queries_per_s']:>10,.0f} queries/s")
        return {"throughput": rates}
    if args.summarise:
        results = collect(config, workdir, plan_jobs(config, workdir, args.workers_of_run or args.workers or 1))
        results["defenses"], rates = {}, []
    else:
        try:
            results = run_defense_audit(config, workdir, progress=lambda m: print(m, flush=True))
        except ValueError as err:  # bad settings, or a work folder of other images: say so, not a traceback
            raise SystemExit(f"oars.py: {err}") from None
        rates = throughput(config, workdir)
    wall = time.time() - started
    table = markdown(results, rates, config, wall, args.summarise)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({**results, "throughput": rates}, default=str))
    return results


if __name__ == "__main__":
    main()
