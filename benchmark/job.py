"""One job = one method x dataset x seed: train, evaluate every test set, write the run folder.

Run folder: ``config.yaml`` (resolved), ``checkpoints/`` (``last.ckpt`` + best on ``val/loss``),
``tensorboard/`` (losses, validation metrics, image grids, histograms, PR curves), ``curves.json`` (pixel ROC /
PR curves per test set), ``subject_counts.npz`` (per-subject counts of every score variant and test set, for the
subject bootstrap: :mod:`benchmark.metrics.subject_counts`) and ``metrics.json`` (written last and atomically, so
its presence means the job finished). A method with score variants (``AnomalyModule.score_variants``) gets
``variants`` in ``metrics.json`` and ``curves.json``, one entry per scoring rule; the top-level ``test_sets`` /
``calibration`` / ``pixel`` are its primary (first) variant.
A method that generates images (``GenerativeModel``) also gets ``figures/samples.png``,
``figures/samples_training.gif`` and ``generative`` (best-SSIM sample quality, one per run whatever the score
variants) in ``metrics.json`` (``benchmark/generative.py``).
Evaluation: ``trainer.validate`` calibrates thresholds on healthy validation data with the weights
under test, then ``trainer.test`` scores every test set (see ``benchmark/metrics``).

Reused weights: a job whose method names another method config in ``AnomalyModule.weights_from`` (AutoDDPM
evaluates an AnoDDPM model) has an ``upstream`` job (same dataset, seed, trainer profile and protocol; linked by
:func:`benchmark.sweep.build_sweep`). Its key includes the upstream's key, and its ``job.json`` the upstream's
spec. :func:`run_job` loads the checkpoint that the finished upstream tested (``load_pretrained``) from the sibling
folder ``<dataset>/<upstream method>/seed_<n>`` (:func:`upstream_run_dir`) and records it as ``run.weights_from``
in ``metrics.json`` and ``weights_from`` in ``config.yaml``; the runner makes sure the upstream has run first.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from benchmark.callbacks import (
    EvaluationCallback,
    FiniteLossGuard,
    ImageGridCallback,
    RandomStateCheckpoint,
    TrainingClock,
    flatten_scalars,
)
from benchmark.config import ComponentConfig, ConfigError, TrainerProfile
from benchmark.generative import GenerativeQualityCallback
from benchmark.io import read_json, write_json, write_yaml
from benchmark.metrics import EvaluationSettings
from benchmark.metrics.bootstrap import DEFAULT_RESAMPLING
from benchmark.metrics.subject_counts import SUBJECT_COUNTS_NAME, write_subject_counts
from benchmark.normative import NormativeCallback, dataset_key
from datamodules.base import AnomalyDataModule
from lightning_modules.base import AnomalyModule, GenerativeModel

METRICS_SCHEMA = "normbench.metrics/2"
FEATURE_CACHE = ".feature_cache"  # runs/<dataset>/.feature_cache: the dataset's offline feature encoder, shared
MONITOR = "val/loss"


@dataclass
class Job:
    """Everything that determines one run."""

    method: ComponentConfig
    dataset: ComponentConfig
    profile: TrainerProfile
    seed: int = 0
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    upstream: Job | None = None  # the job whose trained weights this one evaluates (AnomalyModule.weights_from)

    def run_dir(self, results_dir: Path, sweep: str) -> Path:
        return Path(results_dir) / sweep / "runs" / self.dataset.name / self.method.name / f"seed_{self.seed}"


def upstream_run_dir(run_dir: Path, job: Job) -> Path:
    """The run folder of ``job.upstream``: the sibling ``<dataset>/<upstream method>/seed_<n>`` of ``run_dir``."""
    if job.upstream is None:
        raise ValueError(f"{job.method.name} / {job.dataset.name} / seed {job.seed} has no upstream job")
    run_dir = Path(run_dir)
    return run_dir.parent.parent / job.upstream.method.name / run_dir.name


def describe_job(job: Job) -> str:
    return f"{job.method.name} / {job.dataset.name} / seed {job.seed}"


def device_count(value: Any) -> int:
    """Devices a Lightning ``devices`` / ``num_nodes`` value asks for (-1 when it depends on the machine)."""
    if isinstance(value, list | tuple):
        return len(value)
    if isinstance(value, str):
        value = value.strip()
        if "," in value:
            return len([v for v in value.split(",") if v.strip()])
        return int(value) if value.lstrip("-").isdigit() else -1
    return int(value)


def multi_device(job: Job) -> bool:
    """Whether a job may span several processes (then it runs in a child process of its own)."""
    trainer = job.profile.trainer
    devices, nodes = device_count(trainer.get("devices", 1)), device_count(trainer.get("num_nodes", 1))
    return devices != 1 or nodes != 1


def job_key(job: Job) -> str:
    """Hash of everything that determines a job's result (the resolved configuration)."""
    payload = json.dumps(_resolved_spec(job), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _resolved_spec(job: Job) -> dict[str, Any]:
    spec = {
        "method": {"name": job.method.name, **job.method.resolved()},
        "dataset": {"name": job.dataset.name, **job.dataset.resolved()},
        "profile": {"name": job.profile.name, "trainer": job.profile.trainer,
                    "early_stopping_patience": job.profile.early_stopping_patience,
                    "image_grid_every_n_epochs": job.profile.image_grid_every_n_epochs},
        "evaluation": {"name": job.evaluation.name, **job.evaluation.to_mapping()},
        "seed": job.seed,
    }
    if job.upstream is not None:  # nothing added otherwise: the keys of existing runs must not change
        spec["upstream"] = job_key(job.upstream)
    return spec


def job_spec(job: Job) -> dict[str, Any]:
    """A JSON-able description of a job, from which :func:`job_from_spec` rebuilds it (saved as ``job.json``): the
    resolved configuration (every default filled in), the arguments as configured (``configured_args``: the
    rebuilt job must link the image size and channels from the dataset exactly like the original, so defaults
    must not be frozen into arguments) and the key; a job with an upstream also the upstream's spec
    (``upstream``, nested)."""
    spec = _resolved_spec(job)
    spec["method"]["configured_args"] = dict(job.method.init_args)
    spec["dataset"]["configured_args"] = dict(job.dataset.init_args)
    if job.upstream is not None:
        spec["upstream"] = job_spec(job.upstream)
    spec["key"] = job_key(job)
    return spec


def job_from_spec(spec: dict[str, Any], source: str = "job.json") -> Job:
    """Rebuild a :class:`Job` from :func:`job_spec` output (checked like a config file)."""
    method, dataset = dict(spec["method"]), dict(spec["dataset"])
    profile, evaluation = dict(spec["profile"]), dict(spec["evaluation"])
    method_config = ComponentConfig(method["name"], method["class_path"],
                                    method.get("configured_args", method["init_args"]), source)
    dataset_config = ComponentConfig(dataset["name"], dataset["class_path"],
                                     dataset.get("configured_args", dataset["init_args"]), source)
    method_config.validate()
    dataset_config.validate()
    trainer = TrainerProfile(profile["name"], profile["trainer"], profile["early_stopping_patience"],
                             profile["image_grid_every_n_epochs"], source)
    name = evaluation.pop("name")
    upstream = spec.get("upstream")
    if upstream is not None and not isinstance(upstream, dict):
        raise ConfigError(f"{source}: upstream must be the upstream job's spec (a mapping), got {upstream!r}")
    rebuilt = Job(method_config, dataset_config, trainer, int(spec["seed"]),
                  EvaluationSettings.from_mapping(evaluation, name),
                  upstream=None if upstream is None else job_from_spec(upstream, f"{source}: upstream"))
    if "key" in spec and job_key(rebuilt) != spec["key"]:
        raise ConfigError(f"{source}: the rebuilt job's key {job_key(rebuilt)} differs from the recorded {spec['key']}")
    return rebuilt


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("normbench", "torch", "pytorch-lightning", "torchmetrics", "monai", "numpy", "nibabel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _has_validation_loss(model: AnomalyModule) -> bool:
    return type(model).validation_loss is not AnomalyModule.validation_loss


def _build_trainer(
    job: Job, model: AnomalyModule, run_dir: Path, progress: bool
) -> tuple[pl.Trainer, EvaluationCallback]:
    evaluation = EvaluationCallback(job.method.name, job.evaluation)
    callbacks: list[pl.Callback] = [evaluation, ImageGridCallback(job.profile.image_grid_every_n_epochs),
                                    FiniteLossGuard(), RandomStateCheckpoint(), TrainingClock(), LearningRateMonitor()]
    callbacks.append(NormativeCallback(evaluation, run_dir.parent.parent / FEATURE_CACHE,
                                       dataset_key(job.dataset.resolved()), job.evaluation.feature_extractor,
                                       job.evaluation.detection_min_fraction))  # after the evaluation: adds to it
    if isinstance(model, GenerativeModel):  # sample grids over training, best-SSIM quality at test time
        callbacks.append(GenerativeQualityCallback(job.method.name, job.profile.image_grid_every_n_epochs,
                                                   job.evaluation.generative_samples))
    monitored = _has_validation_loss(model)
    if monitored:  # first: trainer.checkpoint_callback, whose best model is tested
        callbacks.append(ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
            monitor=MONITOR, mode="min", save_top_k=1,
        ))
    # last.ckpt of its own, every epoch: with a monitor, Lightning 2.6's save_last=True writes it only in epochs
    # that improve val/loss, so a resume would restart from the best epoch instead of the latest (without a
    # monitor it is also the checkpoint that is tested)
    callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                                     enable_version_counter=False))
    if monitored and job.profile.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=MONITOR, patience=job.profile.early_stopping_patience, mode="min"))
    options = {**model.trainer_defaults, **job.profile.trainer, **model.trainer_overrides}
    if model.partial_updates and options.get("strategy") == "ddp":
        options["strategy"] = "ddp_find_unused_parameters_true"  # e.g. a GAN's critic step leaves G without gradient
    if model.needs_input_gradients:
        options["inference_mode"] = False  # gradient maps need autograd in validation / test
    options.setdefault("enable_progress_bar", progress)
    options.setdefault("enable_model_summary", False)
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    return pl.Trainer(default_root_dir=str(run_dir), logger=logger, callbacks=callbacks, **options), evaluation


def _callback_result(trainer: pl.Trainer, kind: type[pl.Callback]) -> dict[str, Any] | None:
    """The run-level ``result`` of the trainer's callback of type ``kind`` (``None`` without one, or before its
    test, or on other ranks): the generative-quality or normative summary."""
    found = [callback for callback in trainer.callbacks if isinstance(callback, kind)]
    return found[0].result if found and trainer.is_global_zero else None


def _log_hparams(trainer: pl.Trainer, job: Job, metrics: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab: the method's arguments, seed and profile, with the headline test metrics."""
    if not isinstance(trainer.logger, TensorBoardLogger):
        return
    params = {f"method/{k}": v for k, v in job.method.init_args.items()}
    params.update(method=job.method.name, dataset=job.dataset.name, seed=job.seed, trainer=job.profile.name,
                  evaluation=job.evaluation.name)
    headline = ("pixel/auroc", "pixel/auprc", "calibrated/healthy_fpr@5%/dice", "sample/auroc",
                "sample/vs_healthy/auroc")
    variants = metrics.get("variants") or {None: metrics}
    finals = {f"hparams{'' if variant is None else f'[{variant}]'}/{name}/{key}": value
              for variant, entry in variants.items() for name, result in entry["test_sets"].items()
              for key, value in flatten_scalars(result).items() if key in headline}
    trainer.logger.log_hyperparams({k: v if isinstance(v, int | float | str | bool) else str(v)
                                    for k, v in params.items()}, finals)


def upstream_checkpoint(job: Job, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint that ``job.upstream`` tested, and the record of it (``run.weights_from`` in ``metrics.json``:
    method, run folder relative to the sweep's ``runs`` folder, key, checkpoint file name).

    The upstream's ``metrics.json`` must be completed with the upstream's current key; its
    ``evaluation.checkpoint`` names a file in its ``checkpoints/`` (``"final weights"``: ``last.ckpt``)."""
    upstream, run_dir = job.upstream, Path(run_dir)
    if upstream is None:
        raise ValueError(f"{describe_job(job)} has no upstream job")
    folder = upstream_run_dir(run_dir, job)
    what = f"the upstream job {describe_job(upstream)} ({folder}) whose weights {job.method.name} evaluates"
    metrics = read_json(folder / "metrics.json")
    key = job_key(upstream)
    if metrics is None:
        raise RuntimeError(f"{what} has not finished: no metrics.json; run it first (the sweep runner does)")
    if metrics.get("status") != "completed":
        raise RuntimeError(f"{what} did not complete (status {metrics.get('status')!r}); rerun it first")
    if metrics.get("key") != key:
        raise RuntimeError(f"{what} was run with another configuration (key {metrics.get('key')}, expected {key}); "
                           "rerun it first (the sweep runner does)")
    tested = (metrics.get("evaluation") or {}).get("checkpoint")
    if not isinstance(tested, str) or not tested:
        raise RuntimeError(f"{what}: its metrics.json names no tested checkpoint (evaluation.checkpoint)")
    name = "last.ckpt" if tested == "final weights" else tested
    path = folder / "checkpoints" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: its tested checkpoint {path} is missing (deleted?); rerun the upstream job with --overwrite "
            f"(e.g. list {upstream.method.name} in the sweep's methods and run the sweep with --overwrite, or delete "
            f"{folder}), then rerun this job")
    runs = run_dir.parents[2] if len(run_dir.parents) > 2 else None
    where = folder.relative_to(runs).as_posix() if runs is not None and runs.name == "runs" else str(folder)
    return path, {"method": upstream.method.name, "run_dir": where, "key": key, "checkpoint": name}


def prepared_datamodule(job: Job, progress: bool = True) -> AnomalyDataModule:
    """The job's datamodule with its data generated or checked (``prepare_data``) and its splits set up."""
    datamodule = job.dataset.instantiate(progress=progress)
    if not isinstance(datamodule, AnomalyDataModule):
        raise ConfigError(f"{job.dataset.source}: {job.dataset.class_path} is not an AnomalyDataModule")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def model_links(datamodule: AnomalyDataModule) -> dict[str, int]:
    """The method arguments the data decides: ``image_size`` and ``in_channels``."""
    channels, height, _ = datamodule.image_shape
    return {"image_size": height, "in_channels": channels}


def run_job(job: Job, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train (resuming from ``checkpoints/last.ckpt`` when present), test, and write ``metrics.json``. A job with an
    upstream first loads the weights its finished upstream tested (:func:`upstream_checkpoint`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pretrained, weights_from = upstream_checkpoint(job, run_dir) if job.upstream is not None else (None, None)
    pl.seed_everything(job.seed, workers=True)

    datamodule = prepared_datamodule(job, progress)
    links = model_links(datamodule)
    data_time = time.perf_counter() - started

    model = job.method.instantiate(**links)
    if not isinstance(model, AnomalyModule):
        raise ConfigError(f"{job.method.source}: {job.method.class_path} is not an AnomalyModule")
    if pretrained is not None:
        model.load_pretrained(str(pretrained))
    config = {
        "method": {"name": job.method.name, **job.method.resolved(**links)},
        "dataset": {"name": job.dataset.name, **job.dataset.resolved()},
        "trainer_profile": {"name": job.profile.name, "trainer": job.profile.trainer,
                            "early_stopping_patience": job.profile.early_stopping_patience},
        "seed": job.seed,
        "evaluation": job.evaluation.describe(),
    }
    if weights_from is not None:
        config["weights_from"] = weights_from
    write_yaml(run_dir / "config.yaml", config)
    trainer, evaluation = _build_trainer(job, model, run_dir, progress)

    train_time, earlier_attempts, test_ckpt, trained_images = 0.0, 0.0, None, 0
    if model.requires_training:
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            resumed_from = int(torch.load(last, map_location="cpu", weights_only=False).get("global_step", 0))
            print(f"[normbench] resuming {run_dir} from {last.name} (step {resumed_from})")
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
        clock = next(callback for callback in trainer.callbacks if isinstance(callback, TrainingClock))
        train_time, earlier_attempts = clock.elapsed(), clock.earlier  # over every attempt of a resumed run
        trained_images = trainer.global_step * datamodule.batch_size * trainer.world_size
        if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path:
            test_ckpt = trainer.checkpoint_callback.best_model_path
    t0 = time.perf_counter()
    trainer.validate(model, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)  # healthy calibration
    calibration_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
    test_time = time.perf_counter() - t0

    primary = next(iter(evaluation.results))  # None, or the method's first score variant
    n_test = sum(r["sample"]["n_slices"] for r in evaluation.results[primary].values())
    metrics = {
        "schema": METRICS_SCHEMA,
        "status": "completed",
        "method": job.method.name,
        "dataset": job.dataset.name,
        "seed": job.seed,
        "key": job_key(job),
        "test_sets": evaluation.results[primary],
        "calibration": evaluation.calibration.get(primary),
        "evaluation": {
            **job.evaluation.describe(),
            "pixels": "roi only (background excluded)",
            "bg_included": False,
            "threshold_rule": "pixel flagged when map >= threshold",
            "best_dice_threshold_source": "oracle_test (upper bound: chosen on the test labels)",
            "checkpoint": Path(test_ckpt).name if test_ckpt else "final weights",
            "sample_label": "slice with mask area >= min_lesion_pixels",
            "bootstrap": DEFAULT_RESAMPLING.describe(),  # pixel.ci95 / calibrated.<t>.dice_ci95 of every test set
        },
        "run": {
            "wall_time_s": time.perf_counter() - started + earlier_attempts,
            "data_time_s": data_time,
            "train_time_s": train_time,
            "calibration_time_s": calibration_time,
            "test_time_s": test_time,
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "n_parameters": model.num_parameters(),
            "train_slices": len(datamodule.splits.train),
            "train_images_per_s": trained_images / train_time if train_time > 0 else None,
            "inference_images_per_s": n_test / test_time if test_time > 0 else None,
            "device": str(trainer.strategy.root_device),
            "devices": trainer.world_size,
            "precision": str(trainer.precision),
            "torch_threads": torch.get_num_threads(),
            **({} if weights_from is None else {"weights_from": weights_from}),
        },
        "versions": software_versions(),
    }
    curves = {"schema": "normbench.curves/1", "pixel": evaluation.curves[primary]}
    if primary is not None:  # every scoring rule, each its own leaderboard entry <method>[<variant>]
        metrics["primary_variant"] = primary
        metrics["variants"] = {variant: {"test_sets": evaluation.results[variant],
                                         "calibration": evaluation.calibration.get(variant)}
                               for variant in evaluation.results}
        curves["variants"] = evaluation.curves
    for key, kind in (("normative", NormativeCallback), ("generative", GenerativeQualityCallback)):
        result = _callback_result(trainer, kind)
        if result is not None:  # per run, whatever the score variants
            metrics[key] = result
    if trainer.is_global_zero:
        _log_hparams(trainer, job, metrics)
        write_json(run_dir / "curves.json", curves)
        write_subject_counts(run_dir / SUBJECT_COUNTS_NAME, {
            (variant, name): counts for variant, sets in evaluation.subject_counts.items()
            for name, counts in sets.items()}, metrics["key"])
        write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run finished
    return metrics
