"""Convergence study: train one method far past its default budget and score checkpoints along the way.

Issue 18's question: when a learned method scores at chance, is the port wrong, the schedule too short or the data
too hard? This script trains one method x dataset with the harness's own configuration (no early stopping, no
epoch limit), saves a checkpoint each time the *training* time (forward, backward and optimiser steps; validation and
checkpoint writing excluded) crosses a mark, and afterwards scores every checkpoint through the common evaluation
engine (every test set: pixel AUROC / AUPRC, sample AUROC; best SSIM of samples for generative methods). Methods that
evaluate another method's weights (AutoDDPM on AnoDDPM) are scored as *readouts* of the same checkpoints.

    python experiments/convergence.py train --method ae --minutes 30
    python experiments/convergence.py train --method fanogan --minutes 30 methods.fanogan.gan_iterations=2000
    python experiments/convergence.py train --method anoddpm --readout autoddpm --marks 2,5,10,20,30
    python experiments/convergence.py baseline --method random      # no training: one evaluation
    python experiments/convergence.py plot results/convergence --out docs/images/convergence.png

Each study writes ``<out>/<dataset>/<method>/study.json`` (the configuration, the training trace with validation
losses and the marks, and one evaluation per checkpoint and readout); checkpoints stay in ``checkpoints/`` (not
committed). ``evaluate`` re-scores existing checkpoints (e.g. with another readout) without training again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout, like the benchmarks/ scripts
    sys.path.insert(0, str(ROOT))

from benchmark.callbacks import EvaluationCallback  # noqa: E402
from benchmark.generative import GenerativeQualityCallback  # noqa: E402
from benchmark.io import write_json  # noqa: E402
from benchmark.job import Job, model_links, prepared_datamodule  # noqa: E402
from benchmark.sweep import build_sweep  # noqa: E402
from lightning_modules.base import AnomalyModule, GenerativeModel  # noqa: E402

DEFAULT_MARKS = (0.5, 1, 2, 4, 7, 11, 16, 22, 30)  # minutes of training time
LESION_SETS = ("tumor", "ms", "stroke")
STUDY_FILE = "study.json"


# ---- configuration ---------------------------------------------------------------------------------------------
def build_job(method: str, dataset: str, seed: int, overrides: list[str], trainer: str = "cpu") -> Job:
    """The harness's job for ``method`` x ``dataset`` (overrides as on the command line of ``run``; overrides of
    other methods, ``methods.<other>.<arg>=...``, are left out)."""
    name = Path(method).stem
    mine = [o for o in overrides if not o.startswith("methods.") or o.startswith(f"methods.{name}.")]
    data = {"methods": [method], "datasets": [dataset], "seeds": [seed], "trainer": trainer, "evaluation": "default"}
    sweep = build_sweep("convergence", data, mine, "command line")
    return next(job for job in sweep.jobs if job.method.name == name)


def study_dir(out: Path, job: Job) -> Path:
    return Path(out) / job.dataset.name / job.method.name


# ---- training ---------------------------------------------------------------------------------------------------
class TrainingClock(pl.Callback):
    """Accumulates training time (batch start to batch end), records ``val/loss`` per validation and saves a
    checkpoint whenever the training time crosses the next mark; stops ``fit`` after the last mark."""

    def __init__(self, marks_s: list[float], folder: Path) -> None:
        self.marks_s = sorted(marks_s)
        self.folder = folder
        self.train_s = 0.0
        self.saved: list[dict[str, Any]] = []
        self.validations: list[dict[str, Any]] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.train_s += time.perf_counter() - self._started
        if len(self.saved) < len(self.marks_s) and self.train_s >= self.marks_s[len(self.saved)]:
            self.save(trainer, pl_module)
        if len(self.saved) == len(self.marks_s) or getattr(trainer, "should_stop", False):
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.saved or self.saved[-1]["global_step"] != trainer.global_step:
            self.save(trainer, pl_module)  # a schedule that ended before the last mark: score its final weights

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        name = f"train{self.train_s:07.1f}s.ckpt"
        trainer.save_checkpoint(self.folder / name)
        stage = getattr(pl_module, "stage", None)
        self.saved.append({"checkpoint": name, "train_s": self.train_s, "global_step": trainer.global_step,
                           "epoch": trainer.current_epoch, "stage": stage if isinstance(stage, str) else None})
        print(f"[convergence] {name}: step {trainer.global_step}, epoch {trainer.current_epoch}", flush=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        values = {key: float(value) for key, value in trainer.callback_metrics.items()
                  if key.startswith("val/") and torch.as_tensor(value).numel() == 1}
        if values:
            self.validations.append({"train_s": self.train_s, "global_step": trainer.global_step,
                                     "epoch": trainer.current_epoch, **values})


def train(job: Job, folder: Path, marks_min: list[float]) -> dict[str, Any]:
    """Train with the job's trainer profile minus epoch limits and early stopping, saving marked checkpoints."""
    pl.seed_everything(job.seed, workers=True)
    datamodule = prepared_datamodule(job, progress=False)
    model = job.method.instantiate(**model_links(datamodule))
    if not model.requires_training:
        raise SystemExit(f"{job.method.name} does not train; use 'baseline' (or a readout of its upstream)")
    clock = TrainingClock([60.0 * m for m in marks_min], folder / "checkpoints")
    options = {**model.trainer_defaults, **job.profile.trainer, **model.trainer_overrides}
    options.update(max_epochs=-1, max_steps=-1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
    if model.needs_input_gradients:
        options["inference_mode"] = False
    started = time.perf_counter()
    pl.Trainer(default_root_dir=str(folder), **options).fit(model, datamodule=datamodule)
    return {"wall_s": time.perf_counter() - started, "train_s": clock.train_s, "checkpoints": clock.saved,
            "validations": clock.validations, "torch_threads": torch.get_num_threads()}


# ---- evaluation -------------------------------------------------------------------------------------------------
def summary(results: dict[str | None, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The study's numbers per score variant and test set."""
    out: dict[str, Any] = {}
    for variant, sets in results.items():
        out[variant or "-"] = {name: {"pixel_auroc": r["pixel"]["auroc"], "pixel_auprc": r["pixel"]["auprc"],
                                      "sample_auroc": r["sample"]["auroc"],
                                      "sample_vs_healthy_auroc": (r["sample"].get("vs_healthy") or {}).get("auroc")}
                               for name, r in sets.items()}
    return out


def evaluate(model: AnomalyModule, method: str, datamodule: Any, profile_trainer: dict[str, Any],
             folder: Path) -> dict[str, Any]:
    """Score ``model`` on every test set with the common engine (no calibration: threshold-free metrics only)."""
    evaluation = EvaluationCallback(method)
    callbacks: list[pl.Callback] = [evaluation]
    quality = None
    if isinstance(model, GenerativeModel):
        quality = GenerativeQualityCallback(method, n_samples=64)
        callbacks.append(quality)
    options = {key: value for key, value in profile_trainer.items() if key in ("accelerator", "precision")}
    trainer = pl.Trainer(default_root_dir=str(folder), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, devices=1,
                         inference_mode=not model.needs_input_gradients, **options)
    started = time.perf_counter()
    trainer.test(model, datamodule=datamodule, verbose=False)
    result = {"test_s": time.perf_counter() - started, "metrics": summary(evaluation.results)}
    if quality is not None and quality.result is not None:
        result["ssim"] = {key: quality.result.get(key) for key in ("ssim_max", "ssim_mean", "ssim_min")}
    return result


def load_weights(model: AnomalyModule, checkpoint: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])


def evaluate_checkpoints(job: Job, readouts: list[Job], folder: Path, study: dict[str, Any], label: str = "",
                         last: int | None = None) -> None:
    """Score every saved checkpoint (or the ``last`` few) with the method itself and every readout, writing the
    study after each. ``label`` names a re-scoring of the method's own weights with other inference arguments
    (e.g. a longer latent search): its entries are ``<method>:<label>``."""
    pl.seed_everything(job.seed, workers=True)
    datamodule = prepared_datamodule(job, progress=False)
    linked = model_links(datamodule)
    evaluations = study.setdefault("evaluations", {})
    marks = study["training"]["checkpoints"]
    for mark in marks[-last:] if last else marks:
        checkpoint = folder / "checkpoints" / mark["checkpoint"]
        for scorer in [job, *readouts]:
            name = f"{scorer.method.name}:{label}" if label and scorer is job else scorer.method.name
            key = f"{name}@{mark['checkpoint']}"
            if key in evaluations:
                continue
            pl.seed_everything(job.seed, workers=True)
            model = scorer.method.instantiate(**linked)
            if scorer is job:
                load_weights(model, checkpoint)
            else:
                model.load_pretrained(str(checkpoint))
            result = evaluate(model, scorer.method.name, datamodule, job.profile.trainer, folder)
            evaluations[key] = {"method": name, "overrides": study.get("evaluate_overrides", {}).get(label, []),
                                **mark, **result}
            write_json(folder / STUDY_FILE, study)
            print(f"[convergence] {key}: {headline(result)}", flush=True)


def headline(result: dict[str, Any]) -> str:
    parts = []
    for variant, sets in result["metrics"].items():
        cells = [f"{s} {sets[s]['pixel_auroc']:.3f}/{sets[s]['pixel_auprc']:.3f}" for s in LESION_SETS if s in sets]
        parts.append(f"{variant}: " + ", ".join(cells))
    if "ssim" in result:
        parts.append(f"ssim max {result['ssim']['ssim_max']}")
    return "; ".join(parts)


# ---- commands ---------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> None:
    job = build_job(args.method, args.dataset, args.seed, args.overrides, args.trainer)
    readouts = [build_job(name, args.dataset, args.seed, args.overrides, args.trainer) for name in args.readout]
    folder = study_dir(Path(args.out), job)
    folder.mkdir(parents=True, exist_ok=True)
    marks = [float(m) for m in args.marks.split(",")] if args.marks else [m for m in DEFAULT_MARKS
                                                                         if m <= args.minutes]
    study = {"method": job.method.name, "dataset": job.dataset.name, "seed": job.seed, "overrides": args.overrides,
             "method_config": job.method.resolved(), "dataset_config": job.dataset.resolved(),
             "trainer": job.profile.trainer, "marks_min": marks, "readouts": args.readout,
             "command": " ".join(sys.argv)}
    study["training"] = train(job, folder, marks)
    write_json(folder / STUDY_FILE, study)
    evaluate_checkpoints(job, readouts, folder, study)


def cmd_evaluate(args: argparse.Namespace) -> None:
    job = build_job(args.method, args.dataset, args.seed, args.overrides, args.trainer)
    readouts = [build_job(name, args.dataset, args.seed, args.overrides, args.trainer) for name in args.readout]
    folder = study_dir(Path(args.out), job)
    study = json.loads((folder / STUDY_FILE).read_text())
    study["readouts"] = sorted(set(study.get("readouts", [])) | set(args.readout))
    if args.label:
        study.setdefault("evaluate_overrides", {})[args.label] = args.overrides
    evaluate_checkpoints(job, readouts, folder, study, args.label, args.last)


def cmd_baseline(args: argparse.Namespace) -> None:
    job = build_job(args.method, args.dataset, args.seed, args.overrides, args.trainer)
    folder = study_dir(Path(args.out), job)
    folder.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(job.seed, workers=True)
    datamodule = prepared_datamodule(job, progress=False)
    model = job.method.instantiate(**model_links(datamodule))
    result = evaluate(model, job.method.name, datamodule, job.profile.trainer, folder)
    write_json(folder / STUDY_FILE, {"method": job.method.name, "dataset": job.dataset.name, "seed": job.seed,
                                     "baseline": True, "evaluations": {job.method.name: result}})
    print(f"[convergence] {job.method.name}: {headline(result)}")


# ---- figure ---------------------------------------------------------------------------------------------------------
def load_studies(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(Path(folder).glob(f"*/*/{STUDY_FILE}"))]


def curves(study: dict[str, Any], metric: str) -> dict[str, tuple[list[float], dict[str, list[float]]]]:
    """Per scorer (method or readout), its best score variant (highest mean of ``metric`` over the lesion sets at
    the last checkpoint): training minutes and the metric per lesion set."""
    by_scorer: dict[str, list[dict[str, Any]]] = {}
    for entry in study.get("evaluations", {}).values():
        by_scorer.setdefault(entry["method"], []).append(entry)
    out = {}
    for scorer, entries in by_scorer.items():
        entries.sort(key=lambda e: e["train_s"])
        last = entries[-1]["metrics"]
        variant = max(last, key=lambda v: _mean([last[v][s][metric] for s in LESION_SETS if s in last[v]]))
        label = scorer if variant == "-" else f"{scorer}[{variant}]"
        minutes = [e["train_s"] / 60.0 for e in entries]
        out[label] = (minutes, {s: [e["metrics"][variant][s][metric] for e in entries]
                                for s in LESION_SETS if s in last[variant]})
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else -math.inf


def plot_ssim(studies: list[dict[str, Any]], out: Path) -> None:
    """Best SSIM of samples against held-out healthy slices over training, one line per generative method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for study in studies:
        entries = sorted((e for e in study.get("evaluations", {}).values()
                          if "ssim" in e and e["method"] == study["method"]), key=lambda e: e["train_s"])
        if entries:
            ax.plot([e["train_s"] / 60 for e in entries], [e["ssim"]["ssim_max"] for e in entries], marker="o",
                    ms=3, label=f"{study['method']} (max)")
            ax.plot([e["train_s"] / 60 for e in entries], [e["ssim"]["ssim_mean"] for e in entries], ls="--",
                    color=ax.lines[-1].get_color(), label=f"{study['method']} (mean)")
    ax.set_xscale("log")
    ax.set_xlabel("training time (minutes, log scale)")
    ax.set_ylabel("best SSIM of 64 samples vs healthy test slices")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", fontsize=8)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"[convergence] wrote {out}")


def plot_study(folder: Path, out: Path, metric: str = "pixel_auroc") -> None:
    """One panel per lesion test set: ``metric`` against training minutes, one line per method (its best score
    variant), the baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = load_studies(folder)
    if metric == "ssim_max":
        return plot_ssim([s for s in studies if not s.get("baseline")], out)
    trained = [s for s in studies if not s.get("baseline")]
    baselines = [s for s in studies if s.get("baseline")]
    fig, axes = plt.subplots(1, len(LESION_SETS), figsize=(5.2 * len(LESION_SETS), 4.6), sharey=True,
                             layout="constrained")
    lines = {label: data for study in trained for label, data in curves(study, metric).items()}
    palette = "tab10" if len(lines) <= 10 else "tab20"
    colours = plt.get_cmap(palette)
    for ax, test_set in zip(axes, LESION_SETS, strict=True):
        for i, (label, (minutes, values)) in enumerate(sorted(lines.items())):
            if test_set in values:
                ax.plot(minutes, values[test_set], marker="o", ms=3, color=colours(i % colours.N), label=label)
        for study, style in zip(baselines, ("--", ":", "-."), strict=False):
            result = study["evaluations"][study["method"]]["metrics"]["-"]
            if test_set in result:
                ax.axhline(result[test_set][metric], color="grey", ls=style, label=study["method"])
        ax.set_xscale("log")
        ax.set_title(test_set)
        ax.set_xlabel("training time (minutes, log scale)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric.replace("_", " "))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"[convergence] wrote {out}")


def table(folder: Path) -> str:
    """The studies as one markdown table: per scorer (its best score variant, as in the figure) and checkpoint,
    training time and steps, pixel AUROC / AUPRC per lesion set, best SSIM of samples and test time."""
    header = ("| scorer | min | steps | " + " | ".join(f"{s} AUROC / AUPRC" for s in LESION_SETS)
              + " | SSIM max | test s |")
    rows = [header, "|" + " --- |" * (header.count("|") - 1)]
    for study in load_studies(folder):
        if study.get("baseline"):
            sets = study["evaluations"][study["method"]]["metrics"]["-"]
            cells = [f"{sets[s]['pixel_auroc']:.3f} / {sets[s]['pixel_auprc']:.3f}" for s in LESION_SETS]
            rows.append(f"| {study['method']} | - | - | " + " | ".join(cells) + " | - | - |")
            continue
        for label in curves(study, "pixel_auroc"):
            scorer, _, variant = label.partition("[")
            variant = variant.rstrip("]") or "-"
            entries = sorted((e for e in study["evaluations"].values() if e["method"] == scorer),
                             key=lambda e: e["train_s"])
            for entry in entries:
                sets = entry["metrics"][variant]
                cells = [f"{sets[s]['pixel_auroc']:.3f} / {sets[s]['pixel_auprc']:.3f}" for s in LESION_SETS]
                ssim = (entry.get("ssim") or {}).get("ssim_max")
                rows.append(f"| {label} | {entry['train_s'] / 60:.1f} | {entry['global_step']} | "
                            + " | ".join(cells) + f" | {'-' if ssim is None else f'{ssim:.3f}'} | "
                            f"{entry['test_s']:.0f} |")
    return "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    for name, func in (("train", cmd_train), ("evaluate", cmd_evaluate), ("baseline", cmd_baseline)):
        cmd = sub.add_parser(name)
        cmd.set_defaults(func=func)
        cmd.add_argument("--method", required=True)
        cmd.add_argument("--dataset", default="synthetic_brain")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--trainer", default="cpu")
        cmd.add_argument("--out", default="results/convergence")
        cmd.add_argument("--readout", action="append", default=[], help="method config scoring these weights")
        cmd.add_argument("overrides", nargs="*", help="key=value overrides, as for run_benchmark.py")
        if name == "evaluate":
            cmd.add_argument("--label", default="", help="name of a re-scoring with other inference arguments")
            cmd.add_argument("--last", type=int, default=None, help="only the last N checkpoints")
        if name == "train":
            cmd.add_argument("--minutes", type=float, default=30.0)
            cmd.add_argument("--marks", default=None, help="comma-separated minutes of training time")
    plot = sub.add_parser("plot")
    plot.add_argument("folder")
    plot.add_argument("--out", required=True)
    plot.add_argument("--metric", default="pixel_auroc", choices=("pixel_auroc", "pixel_auprc", "ssim_max"))
    plot.set_defaults(func=lambda a: plot_study(Path(a.folder), Path(a.out), a.metric))
    summary_table = sub.add_parser("table", help="the studies as a markdown table (docs/validation.md)")
    summary_table.add_argument("folder")
    summary_table.set_defaults(func=lambda a: print(table(Path(a.folder))))
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if math.isnan(getattr(args, "minutes", 0.0)):
        raise SystemExit("--minutes must be a number")
    args.func(args)


if __name__ == "__main__":
    main()
