"""``dpplat audit estimate | scores | mia | oars | run``: the audit verbs of the command line."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from dpplat.cli_help import DATASET_HELP, DefaultsFormatter, show_defaults
from dpplat.store import default_store_path


def add_audit_parser(sub) -> None:
    p = sub.add_parser("audit", formatter_class=DefaultsFormatter, help="measure privacy (membership inference) or attack a model's stateful defenses")
    verbs = p.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("estimate", formatter_class=DefaultsFormatter, help="epsilon interval from an attack's error counts")
    e.add_argument("--fp", type=int, required=True, help="false positives (non-members called members)")
    e.add_argument("--fn", type=int, required=True, help="false negatives (members called non-members)")
    e.add_argument("--negatives", type=int, required=True, help="non-members the attack was asked about")
    e.add_argument("--positives", type=int, required=True, help="members the attack was asked about")
    e.add_argument("--delta", type=float, required=True, help="the delta of the guarantee being audited")
    e.add_argument("--confidence", type=float, default=0.95, help="confidence of the interval")
    e.add_argument("--method", choices=["bayes", "clopper-pearson", "both"], default="both",
                   help="the Bayesian posterior interval, Clopper-Pearson's, or both")
    e.add_argument("--prior", choices=["jeffreys", "uniform"], default="jeffreys",
                   help="prior of the Bayesian interval on the error rates")
    sc = verbs.add_parser("scores", formatter_class=DefaultsFormatter, help="epsilon estimates from your own attack's scores (higher = member)")
    sc.add_argument("--members", required=True, help="scores of members: a .npy array or one number per line")
    sc.add_argument("--non-members", required=True, help="scores of non-members, in the same form")
    sc.add_argument("--delta", type=float, help="the delta of the guarantee being audited (default: the --run's)")
    sc.add_argument("--confidence", type=float, default=0.95, help="confidence of the bounds (default: 0.95)")
    sc.add_argument("--seed", type=int, default=0, help="seeds the split into threshold and counted halves "
                                                         "(default: 0)")
    sc.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    sc.add_argument("--run", type=int, metavar="RUN_ID", help="the stored run the scores audit: the audit is filed "
                                                              "under it, and its epsilon is the claim")
    sc.add_argument("--epsilon", help="the claimed epsilon to compare with (default: the --run's epsilon)")
    sc.add_argument("--store", help="SQLite run store the audit is stored in (default: DPPLAT_STORE or ./dpplat.db)")
    sc.add_argument("--no-store", action="store_true", help="print the estimates without storing them")
    m = verbs.add_parser("mia", formatter_class=DefaultsFormatter, help="train models with canaries, attack them, estimate and store epsilon")
    m.add_argument("--dataset", default=None, help=DATASET_HELP)
    m.add_argument("--model", default=None, help="a zoo name or your own package.module:function")
    m.add_argument("--epsilon", default=None, help="claimed epsilon to train at; 'inf' for a non-private reference")
    m.add_argument("--delta", type=float, default=None, help="delta of the guarantee being audited")
    m.add_argument("--models", type=int, default=None, help="models trained, each on a random half of the canaries")
    m.add_argument("--challenges", type=int, default=None, help="canaries per model")
    m.add_argument("--base-size", type=int, default=None, help="training examples besides the canaries")
    m.add_argument("--epochs", type=int, default=None, help="training epochs of each model (default: the plan's or "
                                                          "the run's)")
    m.add_argument("--attack", choices=["loss", "confidence", "lira-offline", "lira-online"], default=None,
                   help="membership score whose guesses are counted")
    m.add_argument("--canary", choices=["mislabeled", "natural", "crafted", "clipbkd"], default=None,
                   help="canaries: training examples with a wrong label, held-out examples as they are, crafted "
                        "out-of-distribution noise images, or clipbkd images along the data's directions of least "
                        "variance (Jagielski et al. 2020), both with random labels")
    m.add_argument("--backend", choices=["local", "ray"], default=None, help="where the models train: a local "
                                                                              "process pool or Ray")
    m.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    m.add_argument("--seed", type=int, default=None, help="seeds the canaries, the splits and the training")
    m.add_argument("--run", type=int, metavar="RUN_ID", help="audit with a stored run's training configuration")
    m.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    m.add_argument("--data-dir", help="folder with the project's dataset copies (default: DPPLAT_DATA, or a "
                                      "checkout's ../shared/data)")
    o = verbs.add_parser("defenses", aliases=["oars"], formatter_class=DefaultsFormatter,
                         help="black-box attacks against stateful defenses, in their standard and OARS forms "
                              "('oars' is an alias)")
    o.add_argument("--run", type=int, metavar="RUN_ID", help="attack the model of a stored training run")
    o.add_argument("--dataset", default=None, help=DATASET_HELP)
    o.add_argument("--model", default=None, help="zoo model to train (non-private) and attack, when no --run")
    o.add_argument("--defense", default=None, help="blacklight, piha, stateful-detection, none, or a comma list")
    o.add_argument("--attack", default=None, help="nes, square, hsja, qeba, surfree, boundary, or a comma list")
    o.add_argument("--mode", default=None,
                   help="standard (the attacks as published), oars (dpplat's OARS forms), oars-paper (Feng et al.'s "
                        "OARS as published), a comma list, 'both' (standard,oars) or 'all' (default: both)")
    o.add_argument("--images", type=int, default=None, help="test images attacked")
    o.add_argument("--budget", type=int, default=None, help="queries per image, rejected ones included")
    o.add_argument("--eps-linf", type=float, default=None, help="L-infinity budget in [0, 1] pixels (default: "
                                                                 "0.3 on MNIST, 0.2 on Fashion-MNIST, else 0.05)")
    o.add_argument("--eps-l2", type=float, default=None, help="L2 budget, normalised by sqrt(pixels)")
    o.add_argument("--policy", choices=["reject", "silent", "flush", "ban-count"], default=None,
                   help="what a defense does with a flagged query: reject it (answer from the matched query's cached "
                        "output), answer it and only count the hit, flush its history, or answer it and note when "
                        "a ban would have fallen")
    o.add_argument("--backend", choices=["local", "ray"], default=None, help="where the attacks run: a local "
                                                                              "process pool or Ray")
    o.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    o.add_argument("--seed", type=int, default=None, help="seeds the target, the images and the attacks")
    o.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    o.add_argument("--data-dir", help="folder with the project's dataset copies (default: DPPLAT_DATA, or a "
                                      "checkout's ../shared/data)")
    from dpplat.audits.defense_audit import DefenseAuditConfig
    from dpplat.audits.mia import MIAConfig

    show_defaults(m, MIAConfig)
    show_defaults(o, DefenseAuditConfig)
    w = verbs.add_parser("whitebox", formatter_class=DefaultsFormatter,
                         help="audit one DP-SGD training run with gradient canaries, observing every noisy update")
    w.add_argument("--dataset", default=None, help=DATASET_HELP)
    w.add_argument("--model", default=None, help="a zoo name or your own package.module:function")
    w.add_argument("--epsilon", type=float, default=None, help="the claimed epsilon the training is calibrated to")
    w.add_argument("--delta", type=float, default=None, help="delta of the claim")
    w.add_argument("--canaries", type=int, default=None, help="gradient canaries, each included with probability 1/2 (default: as many as keep their overlaps below a tenth of the noise's variance, 10,000 to 100,000)")
    w.add_argument("--steps", type=int, default=None, help="DP-SGD steps of the audited training")
    w.add_argument("--runs", type=int, default=None, help="independent training runs whose canaries are pooled")
    w.add_argument("--batch-size", type=int, default=None, help="expected batch size (sample rate = B / N)")
    w.add_argument("--lr", type=float, default=None, help="SGD learning rate of the audited training")
    w.add_argument("--clipping", choices=["per_layer", "flat"], default=None, help="clipping of the audited training")
    w.add_argument("--subset", type=int, default=None, help="train on a deterministic subset of this many examples")
    w.add_argument("--inject", choices=["none", "half-noise", "no-clip-one-layer", "noise-per-rank"], default=None,
                   help="train with this fault while the accountant is told the correct settings")
    w.add_argument("--processes", type=int, default=None,
                   help="data-parallel processes the audited run trains on (torch.distributed, gloo); "
                        "--inject noise-per-rank needs 2 or more")
    w.add_argument("--subject", choices=["dpplat", "opacus"], default=None,
                   help="whose DP-SGD trains the audited run: dpplat's engine or Opacus (with --clipping flat)")
    w.add_argument("--seed", type=int, default=None, help="seeds the canaries, their inclusion and the training")
    w.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    w.add_argument("--data-dir", help="folder with the project's dataset copies (default: DPPLAT_DATA, or a "
                                      "checkout's ../shared/data)")
    w.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    from dpplat.audits.whitebox import WhiteboxConfig

    show_defaults(w, WhiteboxConfig)
    r = verbs.add_parser("run", formatter_class=DefaultsFormatter, help="run an audit plan: a shipped plan's name or a "
                                                                        "TOML file")
    r.add_argument("plan", help="a shipped plan's name (dpplat audit plans lists them) or a plan file")
    r.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    r.add_argument("--backend", choices=["local", "ray"], default=None, help="where the plan's jobs run "
                                                                              "(default: the plan's)")
    verbs.add_parser("plans", formatter_class=DefaultsFormatter, help="list the shipped audit plans")


def _audit_scores(args: argparse.Namespace) -> int:
    import json

    from dpplat.audits import audit_scores, read_scores
    from dpplat.audits.plans import parse_epsilon
    from dpplat.audits.score_audit import score_audit_results
    from dpplat.store import RunStore

    members, non_members = read_scores(args.members, "members"), read_scores(args.non_members, "non-members")
    if args.no_store and args.run is not None:
        raise ValueError("--run files the audit under a stored run; drop --no-store, or drop --run and give --delta.")
    claimed = parse_epsilon(args.epsilon) if args.epsilon is not None else None
    delta, store = args.delta, None
    if not args.no_store:
        store = RunStore(args.store or default_store_path())
    if args.run is not None:
        run = store.get_run(args.run)
        claimed = claimed if claimed is not None else run.epsilon
        delta = delta if delta is not None else run.delta
    if delta is None:
        raise ValueError("audit scores needs --delta (or --run RUN_ID, whose delta it takes).")
    result = audit_scores(members, non_members, delta=delta, confidence=args.confidence, seed=args.seed)
    audit_id = None
    if store is not None:
        params = {"members": str(Path(args.members).resolve()), "non_members": str(Path(args.non_members).resolve()),
                  "delta": delta, "confidence": args.confidence, "seed": args.seed, "claimed_epsilon": claimed}
        audit_id = store.create_audit(kind="scores", params=params, run_id=args.run)
        store.finish_audit(audit_id, score_audit_results(result, members, non_members, claimed_epsilon=claimed))
    if args.json:
        stored = {"audit_id": audit_id, "store": str(store.path.resolve())} if store is not None else {}
        print(json.dumps({**result.as_dict(), "claimed_epsilon": claimed, **stored}))
        return 0
    r = result
    pct = f"{r.confidence:.0%}"
    print(f"Threshold {r.threshold:.6g} (chosen on half the scores); counted: FP {r.fp} of {r.negatives} non-members, "
          f"FN {r.fn} of {r.positives} members, delta {r.delta:g}")
    print(f"Bayesian (Jeffreys): epsilon in [{r.low:.3f}, {r.high:.3f}] ({pct}), lower bound {r.lower_bound:.3f}")
    print(f"Clopper-Pearson lower bound {r.clopper_pearson_lower_bound:.3f}; one-run lower bound "
          f"{r.one_run_lower_bound:.3f}")
    if claimed is not None:
        print(f"Claimed epsilon {claimed:g}" + (": an empirical lower bound exceeds it" if
                                                max(r.lower_bound, r.clopper_pearson_lower_bound,
                                                    r.one_run_lower_bound) > claimed else ""))
    if store is not None:
        print(f"Audit {audit_id} stored in {store.path.resolve()}")
    return 0


def _audit_whitebox(args: argparse.Namespace) -> int:
    """Exit status 1 when an empirical lower bound exceeds the claim, so that a script can stop on it."""
    import json

    from dpplat.audits.plans import run_and_store_whitebox
    from dpplat.audits.whitebox import WhiteboxConfig
    from dpplat.audits.whitebox_report import format_whitebox
    from dpplat.interrupts import graceful_stop
    from dpplat.store import RunStore

    fields = ("dataset", "model", "epsilon", "delta", "canaries", "steps", "runs", "batch_size", "lr", "clipping", "subset",
              "inject", "processes", "subject", "seed", "data_dir")
    config = WhiteboxConfig(**{k: getattr(args, k) for k in fields if getattr(args, k) is not None})
    store = RunStore(args.store or default_store_path())
    with graceful_stop(immediate=True) as stop:
        try:
            audit_id, results = run_and_store_whitebox(
                config, store, progress=None if args.json else lambda m: print(m, file=sys.stderr))
        except KeyboardInterrupt:
            print(f"dpplat audit: interrupted by {stop.reason}; the audit is recorded as interrupted.",
                  file=sys.stderr)
            return stop.exit_code
    if args.json:
        keys = ("claimed_epsilon", "lower_bound", "gdp_epsilon", "gdp_mu", "claimed_mu", "measured_sigma",
                "measured_mechanism_epsilon", "canaries", "included", "steps", "runs", "noise_multiplier",
                "sample_rate", "inject", "exceeds_claim", "verdict")
        print(json.dumps({**{k: results[k] for k in keys}, "bayes_lower_bound": results["bayes"]["lower_bound"],
                          "fdp_mu": results["one_run_fdp"]["mu"], "fdp_epsilon": results["one_run_fdp"]["epsilon"],
                          "audit_id": audit_id, "store": str(store.path.resolve())}))
    else:
        print(format_whitebox(results))
        print(f"Audit {audit_id} stored in {store.path.resolve()}")
    return 1 if results["exceeds_claim"] else 0


def run_audit(args: argparse.Namespace) -> int:
    if args.verb == "scores":
        return _audit_scores(args)
    if args.verb == "whitebox":
        return _audit_whitebox(args)
    if args.verb == "plans":
        from dpplat.shipped import format_plans

        print(format_plans())
        return 0
    if args.verb == "estimate":
        from dpplat.audits import estimate_epsilon

        methods = ["bayes", "clopper-pearson"] if args.method == "both" else [args.method]
        estimates = [(method, estimate_epsilon(args.fp, args.fn, args.negatives, args.positives, args.delta,
                                               args.confidence, method=method, prior=args.prior))
                     for method in methods]  # all computed (and the inputs checked) before anything is printed
        print(f"FP {args.fp}/{args.negatives}, FN {args.fn}/{args.positives}, delta {args.delta:g}, "
              f"confidence {args.confidence:g}")
        print(f"{'method':<18}{'low':>10}{'high':>10}{'width':>10}{'one-sided lower bound':>24}")
        for method, r in estimates:
            label = f"bayes ({args.prior})" if method == "bayes" else method
            print(f"{label:<18}{r.low:>10.4f}{r.high:>10.4f}{r.width:>10.4f}{r.lower_bound:>24.4f}")
        return 0

    from dpplat.audits.defense_audit import DefenseAuditConfig, format_table
    from dpplat.audits.mia import MIAConfig, format_report
    from dpplat.audits.plans import parse_epsilon, load_plan, run_and_store
    from dpplat.interrupts import graceful_stop
    from dpplat.store import RunStore
    from dpplat.training import TrainConfig

    plan = load_plan(args.plan) if args.verb == "run" else None  # a bad plan is refused before the store is touched
    store = RunStore(args.store or default_store_path())
    run_id = None
    if args.verb == "run":
        config = plan
        if args.backend:
            config.backend = args.backend
    elif args.verb in ("defenses", "oars"):
        config = _defense_audit_config(args, store)
        run_id = config.run_id
    else:
        config = MIAConfig()
        if args.run is not None:
            run = store.get_run(args.run)
            config.train = TrainConfig.from_stored(run.config)
            config.dataset = run.dataset
            config.epsilon = run["target_epsilon"] if run["target_epsilon"] else math.inf
            config.delta = run.delta or config.delta
            run_id = args.run
        for name in ("dataset", "delta", "models", "challenges", "base_size", "attack", "canary", "backend",
                     "workers", "seed", "data_dir"):
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        if args.epsilon is not None:
            config.epsilon = parse_epsilon(args.epsilon)
        if args.model is not None:
            config.train.model = args.model
        if args.epochs is not None:
            config.train.epochs = args.epochs
    config.validate()
    with graceful_stop(immediate=True) as stop:
        try:
            audit_id, results = run_and_store(config, store, run_id=run_id,
                                              progress=lambda m: print(m, file=sys.stderr))
        except KeyboardInterrupt:
            print(f"dpplat audit: interrupted by {stop.reason}; the audit is recorded as interrupted, and running the "
                  "same command again resumes it from its finished work files.", file=sys.stderr)
            return stop.exit_code
    print(format_table(results) if isinstance(config, DefenseAuditConfig) else format_report(results))
    print(f"Audit {audit_id} stored in {store.path.resolve()}")
    return 0


def _defense_audit_config(args: argparse.Namespace, store):
    from dpplat.audits.defense_audit import DefenseAuditConfig, expand_modes

    config = DefenseAuditConfig()
    if args.run is not None:
        run = store.get_run(args.run)
        config.run_id, config.dataset, config.model = args.run, run.dataset, run.model
    split = lambda value: [v.strip() for v in value.split(",") if v.strip()]  # noqa: E731
    if args.defense is not None:
        config.defenses = split(args.defense)
    if args.attack is not None:
        config.attacks = split(args.attack)
    if args.mode is not None:
        config.modes = expand_modes(split(args.mode))
    for name in ("dataset", "model", "images", "budget", "eps_linf", "eps_l2", "policy", "backend", "workers", "seed",
                 "data_dir"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.validate()
    return config
