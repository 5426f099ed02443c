"""Command line of NormBench (``python run_benchmark.py ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import traceback
import warnings
from pathlib import Path

from benchmark.config import (
    CONFIG_DIR,
    ConfigError,
    available,
    find_config,
    load_component,
    load_evaluation,
    load_trainer_profile,
    load_yaml,
)
from benchmark.job import Job, is_finished, run_job
from datamodules.errors import DataError

SWEEP_KEYS = {"methods", "datasets", "seeds", "trainer", "evaluation"}


def _job(method: str, dataset: str, trainer: str, seed: int, evaluation: str = "default") -> Job:
    return Job(load_component("methods", method), load_component("datasets", dataset), load_trainer_profile(trainer),
               seed, load_evaluation(evaluation))


def _execute(job: Job, results_dir: Path, sweep: str, overwrite: bool, progress: bool) -> dict:
    run_dir = job.run_dir(results_dir, sweep)
    if is_finished(run_dir) and not overwrite:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        protocol = json.loads(json.dumps(job.evaluation.describe()))
        if any(metrics.get("evaluation", {}).get(key) != value for key, value in protocol.items()):
            raise ConfigError(f"{run_dir} was evaluated with another evaluation protocol than "
                              f"{job.evaluation.name!r}; use another --sweep name, or --overwrite to rerun it")
        print(f"[normbench] {run_dir} is finished; reusing its metrics.json (--overwrite to rerun)")
        return metrics
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: no stale checkpoints or TensorBoard events
    print(f"[normbench] {job.method.name} on {job.dataset.name}, seed {job.seed} -> {run_dir}")
    return run_job(job, run_dir, progress=progress)


SUMMARY_COLUMNS = (("pixel AUROC", ("pixel", "auroc")), ("pixel AUPRC", ("pixel", "auprc")),
                   ("best Dice*", ("pixel", "best_dice")), ("Dice@5%FPR", ("calibrated", "healthy_fpr@5%", "dice")),
                   ("sample AUROC", ("sample", "auroc")))


def _lookup(result: dict, path: tuple[str, ...]) -> object:
    for key in path:
        result = result.get(key, {}) if isinstance(result, dict) else {}
    return result


def _summary(rows: list[dict]) -> str:
    """Console table of the headline metrics (* best Dice is an oracle upper bound: threshold from test labels)."""
    header = f"{'method':<12} {'test set':<10} " + " ".join(f"{title:>12}" for title, _ in SUMMARY_COLUMNS)
    lines = [header]
    for metrics in rows:
        for name, result in metrics.get("test_sets", {}).items():
            values = [_lookup(result, path) for _, path in SUMMARY_COLUMNS]
            cells = [f"{v:.4f}" if isinstance(v, float) and v == v else "n/a" for v in values]
            lines.append(f"{metrics['method']:<12} {name:<10} " + " ".join(f"{c:>12}" for c in cells))
    lines.append("* oracle upper bound (threshold chosen on the test labels); Dice@5%FPR: healthy-calibrated threshold")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    job = _job(args.method, args.dataset, args.trainer, args.seed, args.evaluation)
    metrics = _execute(job, Path(args.results_dir), args.sweep, args.overwrite, not args.quiet)
    print(_summary([metrics]))
    print(f"[normbench] metrics: {job.run_dir(Path(args.results_dir), args.sweep) / 'metrics.json'}")
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    """The default benchmark: every method x dataset x seed of ``configs/sweeps/<sweep>.yaml``, one after another.

    A failing job is reported and the others still run. (The resumable sweep runner with leaderboard and report
    builds on this.)"""
    path = find_config("sweeps", args.sweep_config)
    sweep = load_yaml(path)
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(SWEEP_KEYS)}")
    jobs = [_job(m, d, sweep.get("trainer", "cpu"), s, sweep.get("evaluation", "default"))
            for d in sweep["datasets"] for m in sweep["methods"] for s in sweep.get("seeds", [0])]
    rows, failures = [], []
    for job in jobs:
        try:
            rows.append(_execute(job, Path(args.results_dir), path.stem, args.overwrite, not args.quiet))
        except Exception as error:  # one failing job never stops the rest
            failures.append(f"{job.method.name}/{job.dataset.name}/seed_{job.seed}: {type(error).__name__}: {error}")
            traceback.print_exc()
    print(_summary(rows))
    for failure in failures:
        print(f"[normbench] FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def cmd_list(args: argparse.Namespace) -> int:
    for kind in ("methods", "datasets", "trainers", "evaluation", "sweeps"):
        print(f"{kind}: {', '.join(available(kind)) or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_benchmark.py", description=__doc__)
    parser.add_argument("--results-dir", default="results", help="root folder of all results (default: results)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run folder of each job and train it again from scratch")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--sweep-config", default="default", help="sweep run when no command is given")
    parser.set_defaults(func=cmd_default)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="train and evaluate one method on one dataset")
    run.add_argument("--method", required=True, help=f"method name ({CONFIG_DIR / 'methods'}) or YAML path")
    run.add_argument("--dataset", required=True, help=f"dataset name ({CONFIG_DIR / 'datasets'}) or YAML path")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--trainer", default="cpu", help="trainer profile (configs/trainers)")
    run.add_argument("--evaluation", default="default",
                     help="evaluation protocol (configs/evaluation: default, baur) or YAML path")
    run.add_argument("--sweep", default="adhoc", help="results go to RESULTS_DIR/SWEEP/runs/... (default: adhoc)")
    run.set_defaults(func=cmd_run)
    sub.add_parser("list", help="list methods, datasets, trainer profiles and sweeps").set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:  # global options may also follow the sub-command
        args = parser.parse_args(rest, namespace=args)
    # a known deprecation inside Lightning's own code under recent torch: noise for our users
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    if args.quiet:
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
