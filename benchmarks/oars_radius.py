"""How close may a probe come? A stateful defense's rejection rate against a probe's radius, around the input
and around a point near the decision boundary, for the images of a defense-audit run.

Why: OARS stage 1 measures its floors around the input, but a decision-based attack spends its queries around
its iterate, a blend of input and start image near the boundary. Where the two differ, stage 1's floor is not
the radius the defense lets through where the attack works. This script finds the near-boundary point with an
undefended HopSkipJump run of ``--walk`` queries, then, with the defense's history holding only the centre,
queries ``--probes`` probes at each radius around each centre and counts the rejections. The probes' directions
are HSJA's: Gaussian, constant on ``--tiles`` square tiles of pixels (1, HSJA's default, is pixel noise).
The smallest radius from which on probes are rejected less than 5% of the time is stage 1's criterion
(``dpplat.audits.attacks.knob_calibration.search_knob``).

    python benchmarks/oars.py --dataset mnist --images 8 ...         # a run: its target and images
    python benchmarks/oars_radius.py --dataset mnist --positions 1,5 --out radius.md

Positions are indexes into the run's ``images.json`` (the run's image order). Each image takes about the
walk's undefended HSJA time (20,000 queries: about a minute on one core) plus a few seconds per defense.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dpplat.audits.attacks.base import create_attack, unit
from dpplat.audits.attacks.tiles import tiled_normal
from dpplat.audits.defense_audit import DefenseAuditConfig, _build_defense, image_pool, load_target

ROOT = Path(__file__).resolve().parents[1]
RADII = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.4)


def near_boundary(config: DefenseAuditConfig, model, image: dict, x: torch.Tensor, start: torch.Tensor,
                  walk: int, workdir: Path) -> torch.Tensor:
    """The closest adversarial point an undefended targeted HopSkipJump finds in ``walk`` queries."""
    attack = create_attack("hsja", eps=config.eps("l2"), seed=config.seed)
    attack.attack(_build_defense("none", model, config, workdir), x, image["label"], target=image["target"],
                  start=start, budget=walk, image_index=image["index"])
    return attack.best


def rejection_rates(defense, centre: torch.Tensor, radii, probes: int, seed: list[int],
                    generator: torch.Generator, tile: int = 1) -> list[float]:
    """Per radius: the share of ``probes`` probes around ``centre`` rejected by a history of the centre alone
    (and the probes before them at that radius, as in stage 1)."""
    rates = []
    for radius in radii:
        defense.reseed(seed)  # the image's salt, as in the audit
        defense.reset()
        defense.query(centre.unsqueeze(0))
        directions = unit(tiled_normal(probes, tuple(centre.shape), tile, generator))
        points = (centre + radius * directions).clamp(0, 1)
        rejected = defense.query(points).rejected
        rates.append(int(rejected.sum()) / len(rejected))
    return rates


def smallest_passing(radii, rates: list[float], target_rate: float = 0.05) -> float | None:
    """Stage 1's criterion on the grid of radii: the smallest radius from which on every rate is below the target."""
    passing = None
    for radius, rate in zip(reversed(radii), reversed(rates)):
        if rate >= target_rate:
            break
        passing = radius
    return passing


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / "work-oars"),
                        help="the defense-audit run's work folder (benchmarks/oars.py --workdir)")
    parser.add_argument("--positions", default="0", help="comma list of positions in the run's images.json")
    parser.add_argument("--defenses", default="blacklight,piha")
    parser.add_argument("--radii", default=",".join(map(str, RADII)), help="comma list of L2 probe radii")
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--tiles", default="1", help="comma list of tile sizes in pixels for the probes' directions")
    parser.add_argument("--walk", type=int, default=20_000, help="queries of the undefended run that finds the "
                        "near-boundary point")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) / args.dataset
    if not (workdir / "target.pt").exists() or not (workdir / "images.json").exists():
        raise SystemExit(f"oars_radius.py: {workdir} has no target.pt and images.json; run benchmarks/oars.py with "
                         "--workdir first, or point --workdir at a finished run.")
    torch.set_num_threads(1)
    defenses = args.defenses.split(",")
    radii = [float(r) for r in args.radii.split(",")]
    tiles = [int(t) for t in args.tiles.split(",")]
    config = DefenseAuditConfig(dataset=args.dataset, defenses=defenses, attacks=["hsja"])
    config.validate()
    model = load_target(workdir / "target.pt")
    chosen = json.loads((workdir / "images.json").read_text())
    x, _ = image_pool(config)
    built = {name: _build_defense(name, model, config, workdir) for name in defenses}  # reseeded per probe set
    rows = []
    for position in (int(p) for p in args.positions.split(",")):
        if not 0 <= position < len(chosen):
            raise SystemExit(f"oars_radius.py: position {position} is not in the run's {len(chosen)} images.")
        image = chosen[position]
        if image["start_targeted"] is None:
            raise SystemExit(f"oars_radius.py: image {image['index']} has no targeted start image.")
        original = x[image["index"]]
        point = near_boundary(config, model, image, original, x[image["start_targeted"]], args.walk, workdir)
        away = float((point - original).norm()) / original.numel() ** 0.5
        for name, defense in built.items():
            for tile in tiles:
                generator = torch.Generator().manual_seed(config.seed + image["index"])
                for centre_name, centre in (("input", original), ("near the boundary", point)):
                    rates = rejection_rates(defense, centre, radii, args.probes, [config.seed, image["index"]],
                                            generator, tile)
                    rows.append({"position": position, "index": image["index"], "defense": name, "tile": tile,
                                 "centre": centre_name, "distance": 0.0 if centre_name == "input" else away,
                                 "rates": rates, "passing": smallest_passing(radii, rates)})
    lines = [f"{args.dataset}: rejection rate of {args.probes} probes at each L2 radius, the history holding the "
             f"centre alone; the near-boundary point from {args.walk:,} undefended HSJA queries "
             "(its L2/sqrt(d) distance to the input in brackets)", "",
             "| image | defense | tile | centre | " + " | ".join(f"{r:g}" for r in radii) + " | smallest below 5% |",
             "|---|---|---|---|" + "---|" * (len(radii) + 1)]
    for row in rows:
        centre = row["centre"] + (f" ({row['distance']:.4f})" if row["distance"] else "")
        passing = "-" if row["passing"] is None else f"{row['passing']:g}"
        lines.append(f"| {row['index']} | {row['defense']} | {row['tile']} | {centre} | "
                     + " | ".join(f"{100 * r:.0f}%" for r in row["rates"]) + f" | {passing} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
