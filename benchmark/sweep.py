"""Sweeps: a grid of methods x datasets x seeds under one trainer profile and evaluation protocol.

``configs/sweeps/<name>.yaml``::

    methods: [random, intensity, ae]   # names in configs/methods/ or YAML paths
    datasets: [synthetic_brain]
    seeds: [0, 1, 2]
    trainer: cpu                       # configs/trainers/
    evaluation: default                # configs/evaluation/
    primary_metric: pixel/auprc        # leaderboard rank
    overrides: ["trainer.max_epochs=5"]
    backend: {kind: local}             # or kind: submitit (see benchmark/runner.py)

Command-line overrides ``key=value`` (values parsed as YAML) refine a sweep before anything runs:

==============================  ===========================================================================
``methods=[ae,random]``         any top-level sweep key (``methods``, ``datasets``, ``seeds``, ``trainer``, ...)
``trainer.precision=bf16-mixed`` a ``pytorch_lightning.Trainer`` argument of the profile
``profile.early_stopping_patience=3``  a harness option of the trainer profile
``methods.ae.lr=0.001``          an ``init_args`` entry of one method of the sweep
``datasets.synthetic_brain.batch_size=16``  an ``init_args`` entry of one dataset of the sweep
``evaluation.fpr_targets=[0.05]``  a key of the evaluation protocol
``backend.array_parallelism=4``   a backend option
==============================  ===========================================================================

Every job is keyed by a hash of its resolved configuration (method and dataset with every default filled in,
trainer profile, evaluation protocol, seed), so a changed configuration is a different job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from benchmark.config import (
    TRAINER_PROFILE_KEYS,
    ConfigError,
    check_arguments,
    find_config,
    load_component,
    load_evaluation,
    load_trainer_profile,
    load_yaml,
)
from benchmark.job import Job
from benchmark.metrics import EvaluationSettings
from benchmark.metrics.settings import EVALUATION_KEYS

SWEEP_KEYS = {
    "methods": "method names or YAML paths",
    "datasets": "dataset names or YAML paths",
    "seeds": "training seeds",
    "trainer": "trainer profile (configs/trainers)",
    "evaluation": "evaluation protocol (configs/evaluation)",
    "primary_metric": "leaderboard rank metric, e.g. pixel/auprc",
    "overrides": "list of key=value overrides applied to this sweep",
    "backend": "how jobs run: {kind: local} or {kind: submitit, ...}",
}
BACKEND_KEYS = {
    "kind": "local (this process) or submitit (one SLURM job per run)",
    "cluster": "submitit cluster: slurm, local (subprocesses, for tests) or debug (in this process)",
    "partition": "SLURM partition",
    "gpus_per_node": "GPUs per job",
    "cpus_per_task": "CPUs per job",
    "mem_gb": "memory per job",
    "timeout_min": "time limit per job in minutes",
    "array_parallelism": "jobs of the array running at once",
    "additional_parameters": "extra SLURM parameters (mapping)",
}
DEFAULT_BACKEND = {"kind": "local", "cluster": "slurm", "partition": None, "gpus_per_node": 1, "cpus_per_task": 8,
                   "mem_gb": 32, "timeout_min": 240, "array_parallelism": 8, "additional_parameters": {}}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"trainer.max_epochs=3"`` -> (``["trainer", "max_epochs"]``, 3)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. trainer.max_epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {error}") from error
    return key.strip().split("."), value


@dataclass
class Sweep:
    """A resolved sweep: the jobs to run and how."""

    name: str
    jobs: list[Job]
    primary_metric: str = "pixel/auprc"
    backend: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_BACKEND))
    source: str = "<memory>"


def load_sweep(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Load ``configs/sweeps/<name>.yaml`` (or a path), apply overrides, validate every job before any runs."""
    path = find_config("sweeps", name)
    data = load_yaml(path)
    _check_keys(data, SWEEP_KEYS, str(path))
    return build_sweep(path.stem, data, [*data.get("overrides", []), *overrides], str(path))


def build_sweep(name: str, data: dict[str, Any], overrides: list[str], source: str) -> Sweep:
    """Expand a sweep mapping into jobs (methods x datasets x seeds), with ``key=value`` overrides applied."""
    data = copy.deepcopy(data)
    nested: list[tuple[list[str], Any, str]] = []
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            if path[0] not in SWEEP_KEYS or path[0] == "overrides":
                raise ConfigError(f"override {text!r}: unknown sweep key {path[0]!r}; valid: {sorted(SWEEP_KEYS)}")
            data[path[0]] = value
        else:
            nested.append((path, value, text))
    for key in ("methods", "datasets"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ConfigError(f"{source}: {key} must be a non-empty list")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{source}: seeds must be a non-empty list of integers, got {seeds!r}")

    methods = {m: load_component("methods", str(m)) for m in data["methods"]}
    datasets = {d: load_component("datasets", str(d)) for d in data["datasets"]}
    profile = load_trainer_profile(str(data.get("trainer", "cpu")))
    evaluation = load_evaluation(str(data.get("evaluation", "default")))
    evaluation_mapping = evaluation.to_mapping()
    backend = {**DEFAULT_BACKEND, **(data.get("backend") or {})}
    _check_keys(backend, BACKEND_KEYS, f"{source}: backend")
    for path, value, text in nested:
        head, rest = path[0], path[1:]
        if head == "trainer":
            profile.trainer = {**profile.trainer, ".".join(rest): value}
            check_arguments(pl.Trainer, profile.trainer, f"override {text!r}", where="trainer")
        elif head == "profile":
            _check_keys({rest[0]: value}, {k: v for k, v in TRAINER_PROFILE_KEYS.items() if k != "trainer"},
                        f"override {text!r}")
            setattr(profile, rest[0], value)
        elif head in ("methods", "datasets") and len(rest) == 2:
            components = methods if head == "methods" else datasets
            target = next((c for n, c in components.items() if c.name == rest[0] or n == rest[0]), None)
            if target is None:
                raise ConfigError(f"override {text!r}: {rest[0]!r} is not one of this sweep's {head}: "
                                  f"{[c.name for c in components.values()]}")
            target.init_args = {**target.init_args, rest[1]: value}
            target.source = f"{target.source} + override {text!r}"
            target.validate()
        elif head == "evaluation":
            evaluation_mapping[".".join(rest)] = value
            _check_keys(evaluation_mapping, EVALUATION_KEYS, f"override {text!r}")
        elif head == "backend":
            backend[".".join(rest)] = value
            _check_keys(backend, BACKEND_KEYS, f"override {text!r}")
        else:
            raise ConfigError(f"override {text!r}: unknown key; use a sweep key or trainer.*, profile.*, "
                              "methods.<name>.<arg>, datasets.<name>.<arg>, evaluation.*, backend.*")
    try:
        evaluation = EvaluationSettings.from_mapping(evaluation_mapping, evaluation.name)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: evaluation: {error}") from error
    if backend["kind"] not in ("local", "submitit"):
        raise ConfigError(f"{source}: backend.kind must be local or submitit, got {backend['kind']!r}")
    jobs = [Job(method, dataset, profile, seed, evaluation)
            for dataset in datasets.values() for method in methods.values() for seed in seeds]
    return Sweep(name, jobs, str(data.get("primary_metric", "pixel/auprc")), backend, source)


def _check_keys(data: dict[str, Any], allowed: dict[str, str], source: str) -> None:
    unknown = set(data) - set(allowed)
    if unknown:
        options = "; ".join(f"{k}: {v}" for k, v in allowed.items())
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; valid keys: {options}")


def sweep_dir(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / name
