"""``dpplat train | audit | dashboard``: the command-line surface."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from dpplat.store import StoreError, default_store_path


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the text already gives it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", formatter_class=DefaultsFormatter, help="train a model under a privacy budget and store the run")
    p.add_argument("--config", help="a TOML recipe (models/*.toml); flags given here override it")
    p.add_argument("--dataset", help="mnist, fashion-mnist, cifar10, or a path to your own .npz (x_train, y_train, "
                                     "x_test, y_test)")
    p.add_argument("--model", help="a zoo name (dpplat.models.available()) or your own package.module:function, "
                                   "called with num_classes, in_channels and image_size")
    p.add_argument("--epsilon", type=float, help="target epsilon: the budget the run never exceeds "
                                                 "('inf' with --sigma: no budget)")
    p.add_argument("--delta", type=float, help="target delta; must be below 1/N")
    p.add_argument("--allow-large-delta", action="store_true", default=None,
                   help="accept delta >= 1/N (a guarantee that allows publishing a whole example) with a warning")
    p.add_argument("--sigma", type=float, help="noise multiplier instead of calibrating it from --epsilon "
                                               "(0 trains WITHOUT privacy and needs --epsilon inf)")
    p.add_argument("--epochs", type=int, help="passes over the training data (epochs x N/B Poisson steps)")
    p.add_argument("--batch-size", type=int, help="expected batch size (Poisson sampling rate = B / N)")
    p.add_argument("--max-grad-norm", type=float, help="total clipping bound C")
    p.add_argument("--clipping", choices=["per_layer", "flat"], help="clip each layer's gradient, or the whole one")
    p.add_argument("--accountant", choices=["prv", "rdp"], help="Opacus's privacy accountant")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="the optimizer that applies the noisy gradient")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--seed", type=int, help="seeds the model, the Poisson sampler and the noise")
    p.add_argument("--subset", type=int, help="train on a deterministic random subset of this many examples")
    p.add_argument("--test-subset", type=int, help="evaluate on a subset of the test split")
    p.add_argument("--augmult", type=int, help="augmentation multiplicity: K views per example, averaged before clipping")
    p.add_argument("--ema-decay", type=float, help="evaluate an exponential moving average of the weights")
    p.add_argument("--data-norm-noise", type=float,
                   help="noise multiplier of the private release of *-datanorm and *-centered models' feature "
                        "statistics (default 8)")
    p.add_argument("--data-norm-clip", type=float,
                   help="L2 bound on one example's channel means (and mean squares) in the *-datanorm release "
                        "(default 3; *-centered models use the bound their GroupNorm guarantees)")
    p.add_argument("--device", help="where to train: cpu (default), cuda, cuda:N, or auto (a GPU when there is one)")
    p.add_argument("--secure-mode", action="store_true", default=None, help="noise from the OS CSPRNG")
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--data-dir", help="folder with the dataset files (default: DPPLAT_DATA or ../shared/data)")
    p.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    p.add_argument("--resume", type=int, metavar="RUN_ID", help="continue a stored run from its checkpoint")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (torch.distributed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the result line")
    from dpplat.training import TrainConfig

    _show_defaults(p, TrainConfig)


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig that ``dpplat train``'s flags (and --config file) describe."""
    from dpplat.training import TrainConfig

    overrides = {k: getattr(args, k) for k in (
        "dataset", "model", "epsilon", "delta", "sigma", "epochs", "batch_size", "max_grad_norm", "clipping",
        "accountant", "optimizer", "lr", "momentum", "seed", "subset", "test_subset", "secure_mode", "name", "data_dir",
        "augmult", "ema_decay", "data_norm_noise", "data_norm_clip", "device", "allow_large_delta",
    )}
    if args.config:
        return TrainConfig.from_toml(args.config, **overrides)
    return TrainConfig(**{k: v for k, v in overrides.items() if v is not None})


def _train(args: argparse.Namespace) -> int:
    from dpplat.interrupts import graceful_stop
    from dpplat.store import RunStore
    from dpplat.training import train

    if args.resume is not None:
        given = [k for k, v in vars(args).items() if v is not None and k not in
                 ("command", "resume", "store", "quiet", "nproc")]
        if given:
            raise ValueError(f"--resume continues a run with its stored settings; drop {', '.join('--' + k.replace('_', '-') for k in given)}.")
        config = None
    else:
        config = train_config_from_args(args)
    if args.nproc > 1:
        from dpplat.distributed import launch

        if args.resume is not None:
            raise ValueError("--resume runs in one process; drop --nproc to resume a run.")
        store_path = args.store or default_store_path()
        RunStore(store_path).close()  # a bad store fails here, before any process starts
        launch(config, str(store_path), args.nproc, quiet=args.quiet)
        return 0
    store = RunStore(args.store or default_store_path())
    resume_hint = lambda run_id: f"dpplat train --resume {run_id} --store {store.path.resolve()}"  # noqa: E731
    with warnings.catch_warnings(record=True) as caught, graceful_stop() as stop:
        warnings.simplefilter("always")
        try:
            result = train(config, store=store, quiet=args.quiet, resume=args.resume, stop=stop)
        except KeyboardInterrupt as err:
            run_id = getattr(err, "dpplat_run_id", None)
            where = f"; resume with: {resume_hint(run_id)}" if run_id is not None else ""
            print(f"dpplat train: interrupted{where}", file=sys.stderr)
            return stop.exit_code
        finally:
            _print_warnings(caught)
    if result.status == "interrupted":
        print(f"dpplat train: run {result.run_id} interrupted by {stop.reason} at step {result.steps}, epsilon spent "
              f"{result.epsilon:.3f} (delta {result.delta:g}); a checkpoint was written.\n"
              f"Resume with: {resume_hint(result.run_id)}", file=sys.stderr)
        return stop.exit_code
    if args.quiet:
        print(f"run {result.run_id}: accuracy {result.accuracy:.4f}, epsilon {result.epsilon:.3f} (delta {result.delta:g}), "
              f"status {result.status}, store {result.store_path.resolve()}")
        return 0
    print()
    print(result.statement)
    print()
    if result.status == "budget_exhausted":
        print(f"Training stopped early: the privacy budget epsilon = {config.epsilon} was reached.")
    if not math.isfinite(result.epsilon):
        print("!!! This run added no noise: it is NOT differentially private. !!!")
    print(f"Test accuracy: {result.accuracy:.2%}   epsilon spent: {result.epsilon:.3f} (delta = {result.delta:g})   "
          f"steps: {result.steps}   time: {result.seconds:.0f}s")
    print(f"Run {result.run_id} stored in {result.store_path.resolve()}")
    print(f"Review it: dpplat dashboard --store {result.store_path.resolve()}")
    return 0


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Privacy warnings, once each, on stderr; library chatter (e.g. RDP order hints) is dropped."""
    from dpplat.engine.accounting import PrivacyWarning

    seen = set()
    for w in caught:
        text = str(w.message)
        if text in seen or not issubclass(w.category, PrivacyWarning):
            continue
        seen.add(text)
        print(f"dpplat: warning: {text}", file=sys.stderr)


def _add_audit_parser(sub) -> None:
    p = sub.add_parser("audit", formatter_class=DefaultsFormatter, help="measure privacy (membership inference) or attack a model's stateful defenses")
    verbs = p.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("estimate", formatter_class=DefaultsFormatter, help="epsilon interval from an attack's error counts")
    e.add_argument("--fp", type=int, required=True, help="false positives (non-members called members)")
    e.add_argument("--fn", type=int, required=True, help="false negatives (members called non-members)")
    e.add_argument("--negatives", type=int, required=True)
    e.add_argument("--positives", type=int, required=True)
    e.add_argument("--delta", type=float, required=True)
    e.add_argument("--confidence", type=float, default=0.95)
    e.add_argument("--method", choices=["bayes", "clopper-pearson", "both"], default="both")
    e.add_argument("--prior", choices=["jeffreys", "uniform"], default="jeffreys")
    sc = verbs.add_parser("scores", formatter_class=DefaultsFormatter, help="epsilon estimates from your own attack's scores (higher = member)")
    sc.add_argument("--members", required=True, help="scores of members: a .npy array or one number per line")
    sc.add_argument("--non-members", required=True, help="scores of non-members, in the same form")
    sc.add_argument("--delta", type=float, required=True, help="the delta of the guarantee being audited")
    sc.add_argument("--confidence", type=float, default=0.95, help="confidence of the bounds (default: 0.95)")
    sc.add_argument("--seed", type=int, default=0, help="seeds the split into threshold and counted halves "
                                                         "(default: 0)")
    sc.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    m = verbs.add_parser("mia", formatter_class=DefaultsFormatter, help="train models with canaries, attack them, estimate and store epsilon")
    m.add_argument("--dataset", default=None, help="a built-in name or a path to your own .npz")
    m.add_argument("--model", default=None, help="a zoo name or your own package.module:function")
    m.add_argument("--epsilon", default=None, help="claimed epsilon to train at; 'inf' for a non-private reference")
    m.add_argument("--delta", type=float, default=None)
    m.add_argument("--models", type=int, default=None)
    m.add_argument("--challenges", type=int, default=None)
    m.add_argument("--base-size", type=int, default=None, help="training examples besides the canaries")
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--attack", choices=["loss", "confidence", "lira-offline", "lira-online"], default=None)
    m.add_argument("--canary", choices=["mislabeled", "natural"], default=None)
    m.add_argument("--backend", choices=["local", "ray"], default=None)
    m.add_argument("--workers", type=int, default=None)
    m.add_argument("--seed", type=int, default=None)
    m.add_argument("--run", type=int, metavar="RUN_ID", help="audit with a stored run's training configuration")
    m.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    m.add_argument("--data-dir")
    o = verbs.add_parser("oars", formatter_class=DefaultsFormatter, help="black-box attacks against stateful defenses, standard and OARS form")
    o.add_argument("--run", type=int, metavar="RUN_ID", help="attack the model of a stored training run")
    o.add_argument("--dataset", default=None, help="a built-in name or a path to your own .npz")
    o.add_argument("--model", default=None, help="zoo model to train (non-private) and attack, when no --run")
    o.add_argument("--defense", default=None, help="blacklight, piha, stateful-detection, none, or a comma list")
    o.add_argument("--attack", default=None, help="nes, square, hsja, qeba, surfree, boundary, or a comma list")
    o.add_argument("--mode", choices=["standard", "oars", "both"], default=None)
    o.add_argument("--images", type=int, default=None)
    o.add_argument("--budget", type=int, default=None, help="queries per image, rejected ones included")
    o.add_argument("--eps-linf", type=float, default=None)
    o.add_argument("--eps-l2", type=float, default=None, help="L2 budget, normalised by sqrt(pixels)")
    o.add_argument("--policy", choices=["reject", "silent", "flush", "ban-count"], default=None)
    o.add_argument("--backend", choices=["local", "ray"], default=None)
    o.add_argument("--workers", type=int, default=None)
    o.add_argument("--seed", type=int, default=None)
    o.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    o.add_argument("--data-dir")
    from dpplat.audits.defense_audit import DefenseAuditConfig
    from dpplat.audits.mia import MIAConfig

    _show_defaults(m, MIAConfig)
    _show_defaults(o, DefenseAuditConfig)
    r = verbs.add_parser("run", formatter_class=DefaultsFormatter, help="run an audit plan (audits/NAME.toml)")
    r.add_argument("plan")
    r.add_argument("--store")
    r.add_argument("--backend", choices=["local", "ray"], default=None)


def _audit_scores(args: argparse.Namespace) -> int:
    import json

    from dpplat.audits import audit_scores, read_scores

    result = audit_scores(read_scores(args.members, "members"), read_scores(args.non_members, "non-members"),
                          delta=args.delta, confidence=args.confidence, seed=args.seed)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    r = result
    pct = f"{r.confidence:.0%}"
    print(f"Threshold {r.threshold:.6g} (chosen on half the scores); counted: FP {r.fp} of {r.negatives} non-members, "
          f"FN {r.fn} of {r.positives} members, delta {r.delta:g}")
    print(f"Bayesian (Jeffreys): epsilon in [{r.low:.3f}, {r.high:.3f}] ({pct}), lower bound {r.lower_bound:.3f}")
    print(f"Clopper-Pearson lower bound {r.clopper_pearson_lower_bound:.3f}; one-run lower bound "
          f"{r.one_run_lower_bound:.3f}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    if args.verb == "scores":
        return _audit_scores(args)
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
    elif args.verb == "oars":
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
    from dpplat.audits.defense_audit import DefenseAuditConfig

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
        config.modes = ["standard", "oars"] if args.mode == "both" else [args.mode]
    for name in ("dataset", "model", "images", "budget", "eps_linf", "eps_l2", "policy", "backend", "workers", "seed",
                 "data_dir"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.validate()
    return config


def _add_runs_parser(sub) -> None:
    p = sub.add_parser("runs", formatter_class=DefaultsFormatter, help="list the store's runs and audits, with their status (a dead owner's show as interrupted)")
    p.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")


def _runs(args: argparse.Namespace) -> int:
    """The store's runs and audits; ``running`` only while their process lives (see ``store.live_status``)."""
    from dpplat.store import RunStore

    store = RunStore(args.store or default_store_path(), read_only=True)
    number = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{'run':>5}  {'status':<17}{'model':<18}{'dataset':<15}{'epsilon':>9}{'budget':>8}{'steps':>7}"
          f"{'spent':>7}{'accuracy':>10}")
    for run in store.runs():
        print(f"{run.id:>5}  {run.status:<17}{run.model:<18}{run.dataset:<15}{number(run.epsilon, '.3f'):>9}"
              f"{number(run['target_epsilon'], 'g'):>8}{run['steps'] or 0:>7}{run['spent_steps']:>7}"
              f"{number(run.accuracy, '.2%'):>10}")
    audits = store.audits()
    if audits:
        print(f"\n{'audit':>5}  {'status':<17}{'kind':<8}{'run':>5}")
        for audit in audits:
            print(f"{audit['id']:>5}  {audit['status']:<17}{audit['kind']:<8}{number(audit['run_id'], 'd'):>5}")
    interrupted = [run.id for run in store.runs() if run.status == "interrupted"]
    if interrupted:
        print(f"\nResume an interrupted run with: dpplat train --resume RUN_ID --store {store.path.resolve()} "
              f"(interrupted: {', '.join(map(str, interrupted))})")
    return 0


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", formatter_class=DefaultsFormatter, help="train MNIST under a budget, audit it, and say how to open the dashboard")
    p.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--subset", type=int, default=None, help="train on fewer examples (a quicker demo)")
    p.add_argument("--audit-models", type=int, default=8)
    p.add_argument("--serve", action="store_true", help="open the dashboard at the end")
    p.add_argument("--port", type=int, default=8501)


def _demo(args: argparse.Namespace) -> int:
    """The README's demo: train at epsilon = 2, audit the result, print the way to the dashboard."""
    from dpplat.audits.mia import MIAConfig, format_report
    from dpplat.audits.plans import run_and_store
    from dpplat.store import RunStore
    from dpplat.training import TrainConfig, train

    config = TrainConfig(dataset="mnist", model="cnn", epsilon=2.0, delta=1e-5, epochs=args.epochs, batch_size=512,
                         max_grad_norm=0.1, lr=4.0, subset=args.subset, name="demo")
    audit = MIAConfig(dataset="mnist", epsilon=2.0, delta=1e-5, models=args.audit_models, challenges=128,
                      base_size=1000, train=TrainConfig(**{**config.__dict__, "subset": None, "name": None}))
    store = RunStore(args.store or default_store_path())  # both configs are checked before the store is touched
    print("== 1/3 Training a CNN on MNIST under (epsilon = 2, delta = 1e-5)", flush=True)
    result = train(config, store=store)
    print(result.statement)
    print(f"Test accuracy: {result.accuracy:.2%}   epsilon spent: {result.epsilon:.3f}   steps: {result.steps}   "
          f"time: {result.seconds:.0f}s")
    print(f"Run {result.run_id} stored in {store.path.resolve()}\n")
    print(f"== 2/3 Auditing it: {args.audit_models} models with the run's hyper-parameters, mislabelled canaries",
          flush=True)
    _, results = run_and_store(audit, store, run_id=result.run_id, progress=lambda m: print(m, flush=True))
    print(format_report(results))
    command = f"{Path(sys.executable).parent / 'dpplat'} dashboard --store {store.path.resolve()}"
    print(f"\n== 3/3 Review both in the dashboard:\n   {command}\n   then open http://127.0.0.1:{args.port}")
    if args.serve:
        return _dashboard(argparse.Namespace(store=str(store.path), port=args.port, address="127.0.0.1"))
    return 0


def _add_dashboard_parser(sub) -> None:
    p = sub.add_parser("dashboard", formatter_class=DefaultsFormatter, help="review runs and audits in the Streamlit dashboard")
    p.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1", help="interface to listen on (default: this machine only)")


def dashboard_command(store: str | Path, port: int = 8501, address: str = "127.0.0.1") -> list[str]:
    """The command that serves the dashboard on ``store``; also what the demo prints."""
    import dpplat.dashboard

    app = Path(dpplat.dashboard.__file__).parent / "app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer", "--", "--store", str(Path(store).resolve())]


def _dashboard(args: argparse.Namespace) -> NoReturn:
    """Become the Streamlit server (exec, not a child process): a signal sent to ``dpplat dashboard``, a
    service manager's or a test's SIGTERM, then reaches the server itself. As a child it was orphaned and
    kept serving (every run of the browser test left one behind)."""
    import os

    from dpplat.store import RunStore

    store = Path(args.store or default_store_path())
    RunStore(store, read_only=True).close()  # a clear error now beats a broken page later
    print(f"dpplat dashboard on http://{args.address}:{args.port} for {store.resolve()} (Ctrl+C stops it)", flush=True)
    command = dashboard_command(store, args.port, args.address)
    os.execv(command[0], command)


def _show_defaults(parser: argparse.ArgumentParser, config_cls) -> None:
    """Append each flag's default, taken from the configuration class it fills, to its help text."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}
    for action in parser._actions:
        if action.dest in defaults and defaults[action.dest] is not None and action.default is None \
                and "default" not in (action.help or ""):
            value = defaults[action.dest]
            shown = ",".join(value) if isinstance(value, (list, tuple)) else value
            action.help = f"{action.help or action.dest.replace('_', ' ')} (default: {shown})"


def _name_unexplained_options(parser: argparse.ArgumentParser) -> None:
    """Give an option without help text its name as help, so that --help still shows its default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _name_unexplained_options(child)
        elif action.option_strings and not action.help:
            action.help = action.dest.replace("_", " ")


def build_parser() -> argparse.ArgumentParser:
    from dpplat import __version__

    parser = argparse.ArgumentParser(prog="dpplat", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dpplat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_audit_parser(sub)
    _add_dashboard_parser(sub)
    _add_runs_parser(sub)
    _add_demo_parser(sub)
    _name_unexplained_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dpplat.data import DatasetError
    from dpplat.distributed import RankFailed

    args = build_parser().parse_args(argv)
    # Opacus's RDP conversion hint (also raised inside the PRV accountant) says nothing a user can act on.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    handlers = {"train": _train, "audit": _audit, "dashboard": _dashboard, "runs": _runs, "demo": _demo}
    try:
        return handlers[args.command](args)
    except (ValueError, StoreError, DatasetError, FileNotFoundError, KeyError, RankFailed) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dpplat {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpplat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
