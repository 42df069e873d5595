"""``dpplat train | audit | dashboard | runs | recipes | demo``: the command-line surface (the audit verbs are in
:mod:`dpplat.cli_audit`)."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from dpplat.cli_audit import add_audit_parser, run_audit
from dpplat.cli_help import DefaultsFormatter, name_unexplained_options
from dpplat.holdout import evaluated_on
from dpplat.store import StoreError, default_store_path
from dpplat.train_flags import add_train_arguments, train_config_from_args


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", formatter_class=DefaultsFormatter, help="train a model under a privacy budget and store the run")
    add_train_arguments(p)


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
    print(f"{evaluated_on(config).capitalize()} accuracy: {result.accuracy:.2%}   epsilon spent: {result.epsilon:.3f} "
          f"(delta = {result.delta:g})   "
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


def _add_recipes_parser(sub) -> None:
    sub.add_parser("recipes", formatter_class=DefaultsFormatter,
                   help="list the shipped training recipes and the results measured with them")


def _recipes(args: argparse.Namespace) -> int:
    from dpplat.shipped import format_recipes

    print(format_recipes())
    return 0


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", formatter_class=DefaultsFormatter, help="train MNIST under a budget, audit it, and say how to open the dashboard")
    p.add_argument("--store", help="SQLite run store (default: DPPLAT_STORE or ./dpplat.db)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs of the demo's model")
    p.add_argument("--subset", type=int, default=None, help="train on fewer examples (a quicker demo)")
    p.add_argument("--audit-models", type=int, default=8, help="models the privacy audit trains")
    p.add_argument("--serve", action="store_true", help="open the dashboard at the end")
    p.add_argument("--port", type=int, default=8501, help="port of the dashboard --serve opens")


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
    p.add_argument("--port", type=int, default=8501, help="port the dashboard serves on")
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
    service manager's or a test's SIGTERM, then reaches the server itself; a child process would be orphaned
    by it and keep serving."""
    import os

    from dpplat.store import RunStore

    store = Path(args.store or default_store_path())
    RunStore(store, read_only=True).close()  # a clear error now beats a broken page later
    print(f"dpplat dashboard on http://{args.address}:{args.port} for {store.resolve()} (Ctrl+C stops it)", flush=True)
    command = dashboard_command(store, args.port, args.address)
    os.execv(command[0], command)


DESCRIPTION = ("dpplat: train PyTorch models under a differential-privacy budget, audit them, and review them.\n"
               "'dpplat COMMAND --help' shows a command's options with their defaults.")


def build_parser() -> argparse.ArgumentParser:
    from dpplat import __version__

    parser = argparse.ArgumentParser(prog="dpplat", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dpplat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    add_audit_parser(sub)
    _add_dashboard_parser(sub)
    _add_runs_parser(sub)
    _add_recipes_parser(sub)
    _add_demo_parser(sub)
    name_unexplained_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dpplat.data import DatasetError
    from dpplat.distributed import RankFailed

    args = build_parser().parse_args(argv)
    # Opacus's RDP conversion hint (also raised inside the PRV accountant) says nothing a user can act on.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    handlers = {"train": _train, "audit": run_audit, "dashboard": _dashboard, "runs": _runs, "recipes": _recipes, "demo": _demo}
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
