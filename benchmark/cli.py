"""Command line of NormBench (``python run_benchmark.py ...``).

``python run_benchmark.py`` runs the default sweep; ``sweep``, ``run``, ``leaderboard``, ``compare``, ``report``
and ``list`` are the sub-commands. ``key=value`` arguments override any configuration value (see
``benchmark/sweep.py``); ``--devices``, ``--precision``, ``--backend`` and ``--workers`` are shortcuts for the
common ones.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import traceback
import warnings
from pathlib import Path

from benchmark.config import CONFIG_DIR, ConfigError, available
from benchmark.io import read_json
from benchmark.leaderboard import expand_variants
from benchmark.runner import run_from_job_file, run_sweep
from benchmark.scheduling import JobOutcome, is_rank_zero
from benchmark.sweep import Sweep, build_sweep, load_sweep
from datamodules.errors import DataError

SUMMARY_COLUMNS = (("pixel AUROC", ("pixel", "auroc")), ("pixel AUPRC", ("pixel", "auprc")),
                   ("best Dice*", ("pixel", "best_dice")), ("Dice@5%FPR", ("calibrated", "healthy_fpr@5%", "dice")),
                   ("sample AUROC", ("sample", "auroc")), ("vs healthy", ("sample", "vs_healthy", "auroc")))


def _lookup(result: dict, path: tuple[str, ...]) -> object:
    for key in path:
        result = result.get(key, {}) if isinstance(result, dict) else {}
    return result


def _summary(rows: list[dict]) -> str:
    """Console table of the headline metrics (* best Dice is an oracle upper bound: threshold from test labels)."""
    width = max([16, *(len(str(m["method"])) + 1 for m in expand_variants(rows))])
    header = f"{'method':<{width}} {'test set':<10} " + " ".join(f"{title:>12}" for title, _ in SUMMARY_COLUMNS)
    lines = [header]
    for metrics in expand_variants(rows):
        for name, result in metrics.get("test_sets", {}).items():
            values = [_lookup(result, path) for _, path in SUMMARY_COLUMNS]
            cells = [f"{v:.4f}" if isinstance(v, float) and v == v else "n/a" for v in values]
            lines.append(f"{metrics['method']:<{width}} {name:<10} " + " ".join(f"{c:>12}" for c in cells))
    lines.append("* oracle upper bound (threshold chosen on the test labels); Dice@5%FPR: healthy-calibrated threshold;"
                 " vs healthy: sample AUROC of this set's anomalous slices against the healthy test set")
    return "\n".join(lines)


def _overrides(args: argparse.Namespace) -> list[str]:
    shortcuts = [f"trainer.devices={args.devices}"] if args.devices is not None else []
    if args.devices is not None and args.devices != 1:
        shortcuts.append("trainer.strategy=ddp")
    if args.precision:
        shortcuts.append(f"trainer.precision={args.precision}")
    if args.backend:
        shortcuts.append(f"backend.kind={args.backend}")
    if args.workers is not None:
        shortcuts.append(f"backend.workers={args.workers}")
    return [*shortcuts, *args.overrides]


def _update_outputs(sweep: Sweep, final: bool = False):
    """After each job: the leaderboard; at the end also the report. Their failure never stops the sweep."""

    def update(sweep_dir: Path) -> None:
        if not is_rank_zero():
            return
        from benchmark.leaderboard import write_leaderboard

        try:
            write_leaderboard(sweep_dir, primary=sweep.primary_metric)
            if final:
                from benchmark.report import write_report

                write_report(sweep_dir, primary=sweep.primary_metric)
        except Exception as error:  # results stay in the run folders; say what went wrong
            print(f"[normbench] could not update the leaderboard / report in {sweep_dir}: {error}", file=sys.stderr)
            traceback.print_exc()

    return update


def _execute(sweep: Sweep, args: argparse.Namespace) -> list[JobOutcome]:
    results = Path(args.results_dir)
    if args.overwrite:
        for job in sweep.jobs:
            run_dir = job.run_dir(results, sweep.name)
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a fresh run: no stale checkpoints or TensorBoard events
    outcomes = run_sweep(sweep, results, progress=not args.quiet, after_job=_update_outputs(sweep))
    sweep_dir = results / sweep.name
    if any(o.status != "skipped" for o in outcomes) or not (sweep_dir / "report.md").is_file():
        _update_outputs(sweep, final=True)(sweep_dir)
    return outcomes


def _finish(sweep: Sweep, outcomes: list[JobOutcome], results_dir: Path) -> int:
    rows = [read_json(o.job.run_dir(results_dir, sweep.name) / "metrics.json") or {} for o in outcomes]
    print(_summary([r for r in rows if r.get("status") == "completed"]))
    sweep_dir = results_dir / sweep.name
    print(f"[normbench] leaderboard: {sweep_dir / 'leaderboard.csv'}  report: {sweep_dir / 'report.md'}  "
          f"TensorBoard: tensorboard --logdir {sweep_dir / 'runs'}")
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in failed:
        job = outcome.job
        print(f"[normbench] FAILED {job.method.name} / {job.dataset.name} / seed {job.seed}: {outcome.error}",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Every method x dataset x seed of a sweep config; failures are recorded and the others still run."""
    sweep = load_sweep(args.config, _overrides(args))
    return _finish(sweep, _execute(sweep, args), Path(args.results_dir))


def cmd_run(args: argparse.Namespace) -> int:
    if args.job:  # one prepared job (a multi-device child process, a local worker or a submitit worker)
        from benchmark.workers import apply_threads, bind_to_parent

        bind_to_parent()
        if args.threads is not None:
            apply_threads(args.threads)
        run_from_job_file(Path(args.job), progress=not args.quiet)
        return 0
    if not (args.method and args.dataset):
        raise ConfigError("run needs --method and --dataset (or --job PATH/job.json)")
    data = {"methods": [args.method], "datasets": [args.dataset], "seeds": [args.seed], "trainer": args.trainer,
            "evaluation": args.evaluation}
    sweep = build_sweep(args.sweep, data, _overrides(args), "command line")
    return _finish(sweep, _execute(sweep, args), Path(args.results_dir))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import write_leaderboard

    path = write_leaderboard(Path(args.sweep_dir), primary=args.primary)
    print(f"[normbench] wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import write_leaderboard
    from benchmark.report import write_report

    write_leaderboard(Path(args.sweep_dir), primary=args.primary)
    print(f"[normbench] wrote {write_report(Path(args.sweep_dir), primary=args.primary)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmark.compare import compare

    new = Path(args.new)
    out = Path(args.out) if args.out else (new if new.is_dir() else new.parent) / "compare"
    result = compare(new, Path(args.against), out_dir=out, primary=args.primary)
    print(result.to_markdown())
    print(f"[normbench] {result.summary()}")
    print(f"[normbench] comparison saved in {out}")
    return 0


def _release_options(release_cls: type, pairs: list[str]) -> dict[str, str]:
    """``--set key=value`` pairs checked against the release's constructor options."""
    import inspect

    accepted = [k for k in inspect.signature(release_cls.__init__).parameters if k not in ("self", "root",
                                                                                           "modalities")]
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: write key=value")
        if key not in accepted:
            raise ConfigError(f"--set {key}: unknown option of {release_cls.name}; its options: {accepted or 'none'}")
        options[key] = value
    return options


def cmd_prepare(args: argparse.Namespace) -> int:
    """Validate an official release folder and write its subject-level split CSVs (idempotent)."""
    from datamodules.releases import release_class
    from datamodules.releases.base import prepare

    release_cls = release_class(args.dataset)
    modalities = [m for m in args.modalities.split(",") if m] if args.modalities else None
    release = release_cls(args.root, modalities=modalities, **_release_options(release_cls, args.set))
    out = Path(args.out) if args.out else Path("data") / args.dataset
    result = prepare(release, out, seed=args.seed, healthy_split=args.healthy_split,
                     pathology_split=args.pathology_split, skip_invalid=args.skip_invalid,
                     headers_only=args.check == "headers")
    print(result.report)
    changed = ", ".join(result.written) if result.written else "nothing changed (already prepared)"
    print(f"[normbench] {out}: {changed}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for kind in ("methods", "datasets", "trainers", "evaluation", "sweeps"):
        print(f"{kind}: {', '.join(available(kind)) or '-'}")
    return 0


def _options(top_level: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the sub-command (sub-commands do not reset those given before them)."""
    options = argparse.ArgumentParser(add_help=False)
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    options.add_argument("--results-dir", default=default("results"), help="root folder of all results")
    options.add_argument("--overwrite", action="store_true", default=default(False),
                         help="delete the run folder of each job and train it again from scratch")
    options.add_argument("--quiet", action="store_true", default=default(False), help="no progress bars")
    options.add_argument("--devices", type=int, default=default(None),
                         help="devices per job (shortcut for trainer.devices=N, with DDP when N > 1)")
    options.add_argument("--precision", default=default(None),
                         help="e.g. bf16-mixed, 16-mixed (shortcut for trainer.precision=...)")
    options.add_argument("--backend", choices=("local", "submitit"), default=default(None),
                         help="shortcut for backend.kind=...")
    options.add_argument("--workers", type=int, default=default(None),
                         help="local jobs run at once, each in its own process (shortcut for backend.workers=N)")
    return options


def build_parser() -> argparse.ArgumentParser:
    common = _options(top_level=False)
    parser = argparse.ArgumentParser(prog="run_benchmark.py", description=__doc__, parents=[_options(True)],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="sweep run when no command is given")
    parser.set_defaults(func=cmd_sweep, overrides=[])
    sub = parser.add_subparsers(dest="command")
    overrides = {"nargs": "*", "metavar": "key=value",
                 "help": "configuration overrides, e.g. trainer.max_epochs=5 methods.ae.lr=0.001 seeds=[0,1,2]"}

    sweep = sub.add_parser("sweep", parents=[common], help="run every job of a sweep config")
    sweep.add_argument("--config", default="default", help="sweep name (configs/sweeps) or YAML path")
    sweep.add_argument("overrides", **overrides)
    sweep.set_defaults(func=cmd_sweep)

    run = sub.add_parser("run", parents=[common], help="train and evaluate one method on one dataset")
    run.add_argument("--method", help=f"method name ({CONFIG_DIR / 'methods'}) or YAML path")
    run.add_argument("--dataset", help=f"dataset name ({CONFIG_DIR / 'datasets'}) or YAML path")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--trainer", default="cpu", help="trainer profile (configs/trainers)")
    run.add_argument("--evaluation", default="default",
                     help="evaluation protocol (configs/evaluation: default, baur) or YAML path")
    run.add_argument("--sweep", default="adhoc", help="results go to RESULTS_DIR/SWEEP/runs/... (default: adhoc)")
    run.add_argument("--job", help=argparse.SUPPRESS)  # internal: run a prepared job.json
    run.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # internal: torch threads of a --job process
    run.add_argument("overrides", **overrides)
    run.set_defaults(func=cmd_run)

    for name, func, text in (("leaderboard", cmd_leaderboard, "rebuild SWEEP_DIR/leaderboard.csv from its runs"),
                             ("report", cmd_report, "rebuild the leaderboard and SWEEP_DIR/report.md")):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("sweep_dir", help="a sweep folder, e.g. results/default")
        command.add_argument("--primary", default="pixel/auprc",
                             help="rank metric, or comma-separated fallbacks (default: pixel/auprc)")
        command.set_defaults(func=func)

    comp = sub.add_parser("compare", parents=[common], help="compare a sweep or leaderboard with a reference")
    comp.add_argument("new", help="a sweep folder or leaderboard.csv")
    comp.add_argument("--against", required=True, help="reference leaderboard.csv, e.g. results/reference/...")
    comp.add_argument("--out", help="where to save compare.csv/.md/.png (default: beside NEW, in compare/)")
    comp.add_argument("--primary", default="pixel/auprc", help="rank metric (default: pixel/auprc)")
    comp.set_defaults(func=cmd_compare)

    prep = sub.add_parser("prepare", help="validate a public dataset release and write its split CSVs",
                          description="Scan an official release folder (layouts: README, 'Real datasets'), report "
                                      "every missing / unreadable / mismatched file and write subject-level split "
                                      "CSVs with a fixed seed. Re-running is idempotent.")
    prep.add_argument("dataset", help="release name: brats, ixi, hcp, atlas, mslub, msseg2015, msseg2016, lits, "
                                      "oasis, fastmri")
    prep.add_argument("--root", required=True, help="the extracted release folder")
    prep.add_argument("--out", help="where the split CSVs go (default: data/DATASET, what configs/datasets expect)")
    prep.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    prep.add_argument("--modalities", help="comma-separated modalities to require and write (default: all)")
    prep.add_argument("--healthy-split", help="fractions of healthy subjects, e.g. train=0.8,val=0.1,test=0.1")
    prep.add_argument("--pathology-split", help="fractions of patients, e.g. test=1 or train=0.5,val=0.1,test=0.4 "
                                                "(train / val use their lesion-free slices)")
    prep.add_argument("--skip-invalid", action="store_true",
                      help="leave subjects with problems out (listed in prepare.json) instead of stopping")
    prep.add_argument("--check", choices=("full", "headers"), default="full",
                      help="full: read every voxel (labels, NaN); headers: shapes and grids only (faster)")
    prep.add_argument("--set", action="append", default=[], metavar="key=value",
                      help="release option, e.g. labels=tumor_core (BraTS); repeatable")
    prep.set_defaults(func=cmd_prepare)

    sub.add_parser("list", help="list methods, datasets, trainer / evaluation profiles and sweeps").set_defaults(
        func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a known deprecation inside Lightning's own code under recent torch: noise for our users
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if getattr(args, "quiet", False):
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
