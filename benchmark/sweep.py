"""Sweeps: a grid of methods x datasets x seeds under one trainer profile and evaluation protocol.

``configs/sweeps/<name>.yaml``::

    methods: [random, intensity, ae]   # names in configs/methods/ or YAML paths
    datasets: [synthetic_brain]
    seeds: [0, 1, 2]
    trainer: cpu                       # configs/trainers/
    evaluation: default                # configs/evaluation/
    primary_metric: pixel/auprc        # leaderboard rank
    overrides: ["trainer.max_epochs=5"]
    exclude: [{method: ascnet, dataset: digits}]   # pairs left out (a method that needs an unlabelled pool)
    backend: {kind: local}             # or {kind: local, workers: 2}, or kind: submitit (see benchmark/runner.py)

Grid entries run one config under several argument values. An entry of ``methods`` or ``datasets`` is either a
config name (or YAML path) or a mapping with exactly one key, the config name or path, whose value maps
``init_args`` entries to values::

    datasets:
      - synthetic_brain
      - digits: {held_out_class: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}   # ten variants
    methods:
      - vae_mlp: {log_std: [-1.0, 0.0], lr: 0.001}   # two variants, both with lr 0.001
      - ae: {lr: 0.001}                               # scalars only: a single variant
      - ae: {betas: [[0.5, 0.9]]}                     # a list-valued argument: a list of lists (one variant)

A list value is a grid axis; several axes give their cartesian product, the first key written varying slowest.
A scalar (or mapping) value applies to every variant. An argument whose value is itself a list is therefore
written as a list of lists, one inner list per variant. Each variant is named
``<config>@<key>=<value>[,<key>=<value>...]`` (keys in the order written): the grid keys when there are any,
otherwise every given key, e.g. ``digits@held_out_class=3``, ``vae_mlp@log_std=-1.0``, ``ae@lr=0.001``. Values
are written YAML-like (``true``, ``null``, ``1e-05``, ``[0.5,0.9]``); a value that would put ``/``, ``\\``, NUL or
whitespace into the name (it names the run folders) is an error: give such arguments a config file of their own.
Two entries with the same name are an error. The leaderboard and report show these names as datasets and methods;
:mod:`benchmark.families` averages over the variants of one dataset.

Command-line overrides ``key=value`` (values parsed as YAML) refine a sweep before anything runs:

==============================  ===========================================================================
``methods=[ae,random]``         any top-level sweep key (``methods``, ``datasets``, ``seeds``, ``trainer``, ...);
                                grid entries too: ``'datasets=[{synthetic_brain: {seed: [0, 1]}}]'``
``trainer.precision=bf16-mixed`` a ``pytorch_lightning.Trainer`` argument of the profile
``profile.early_stopping_patience=3``  a harness option of the trainer profile
``methods.ae.lr=0.001``          an ``init_args`` entry of one method of the sweep
``datasets.synthetic_brain.batch_size=16``  an ``init_args`` entry of one dataset of the sweep
``evaluation.fpr_targets=[0.05]``  a key of the evaluation protocol
``backend.array_parallelism=4``   a backend option (``backend.workers=2``: two local jobs at once)
==============================  ===========================================================================

In ``methods.<name>.<arg>=v`` and ``datasets.<name>.<arg>=v``, ``<name>`` is a variant's full name (that variant
only: ``methods.vae_mlp@log_std=-1.0.lr=0.01``) or a config name (every entry and variant of that config).
Overrides apply after the grid: an override of a grid argument replaces its value in every variant it matches
(the variants keep their names).

Every job is keyed by a hash of its resolved configuration (method and dataset with every default filled in,
trainer profile, evaluation protocol, seed), so a changed configuration is a different job.

Reused weights: a method whose class names another method config in ``AnomalyModule.weights_from`` (AutoDDPM's
``weights_from: anoddpm``) evaluates that method's trained job of the same dataset, seed, trainer profile and
evaluation protocol, its *upstream* (``Job.upstream``). The upstream is the sweep's own job of that method when the
sweep has that method (a name of the sweep's methods: a variant's full name, or a config name or path with exactly
one variant in the sweep), so that the sweep's overrides of it apply; otherwise a job of the method config as it is
(a config name or YAML path; it runs in the sibling folder ``runs/<dataset>/<name>/seed_<n>`` without being one of
the sweep's jobs). The dependent job's key includes the upstream's, so retraining or reconfiguring the upstream
reruns the dependent. The upstream's method must train; an upstream may itself have an upstream (a method that
fine-tunes another's weights), but not the dependent: a cycle is a ConfigError.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from benchmark.config import (
    TRAINER_PROFILE_KEYS,
    ComponentConfig,
    ConfigError,
    check_arguments,
    find_config,
    load_component,
    load_evaluation,
    load_trainer_profile,
    load_yaml,
)
from benchmark.job import Job, multi_device
from benchmark.metrics import EvaluationSettings
from benchmark.metrics.settings import EVALUATION_KEYS
from lightning_modules.base import AnomalyModule

SWEEP_KEYS = {
    "methods": "method names or YAML paths, or grid entries {name: {arg: [values]}}",
    "datasets": "dataset names or YAML paths, or grid entries {name: {arg: [values]}}",
    "seeds": "training seeds",
    "trainer": "trainer profile (configs/trainers)",
    "evaluation": "evaluation protocol (configs/evaluation)",
    "primary_metric": "leaderboard rank metric, e.g. pixel/auprc",
    "overrides": "list of key=value overrides applied to this sweep",
    "exclude": "method x dataset pairs left out of the grid: [{method: name, dataset: name}, ...]",
    "backend": "how jobs run: {kind: local} or {kind: submitit, ...}",
}
BACKEND_KEYS = {
    "kind": "local (this machine: this process, or worker processes) or submitit (one SLURM job per run)",
    "cluster": "submitit cluster: slurm, local (subprocesses, for tests) or debug (in this process)",
    "partition": "SLURM partition",
    "gpus_per_node": "GPUs per job",
    "cpus_per_task": "CPUs per job",
    "mem_gb": "memory per job",
    "timeout_min": "time limit per job in minutes",
    "array_parallelism": "jobs of the array running at once",
    "additional_parameters": "extra SLURM parameters (mapping)",
    "workers": "local jobs run at once, each in a child process (1: one after another in this process)",
    "threads_per_worker": "torch threads of each local job (default with workers > 1: CPU cores // workers)",
}
DEFAULT_BACKEND = {"kind": "local", "cluster": "slurm", "partition": None, "gpus_per_node": 1, "cpus_per_task": 8,
                   "mem_gb": 32, "timeout_min": 240, "array_parallelism": 8, "additional_parameters": {},
                   "workers": 1, "threads_per_worker": None}


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

    methods = _expand_all("methods", data["methods"], source)
    datasets = _expand_all("datasets", data["datasets"], source)
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
        elif head in ("methods", "datasets"):
            _override_component(text, head, methods if head == "methods" else datasets)
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
    _check_backend(backend, source)
    excluded = _exclusions(data.get("exclude") or [], methods, datasets, source)
    jobs = [Job(method, dataset, profile, seed, evaluation)
            for dataset, dataset_names in datasets for method, method_names in methods
            if not any(_matches(rule, method_names, dataset_names) for rule in excluded) for seed in seeds]
    _link_upstreams(jobs, methods)
    _check_workers(backend, jobs, source)
    return Sweep(name, jobs, str(data.get("primary_metric", "pixel/auprc")), backend, source)


# ---- backend --------------------------------------------------------------------------------------------------
def _check_backend(backend: dict[str, Any], source: str) -> None:
    """ConfigError (naming the key) for a backend ``kind`` or local worker option that cannot work."""
    if backend["kind"] not in ("local", "submitit"):
        raise ConfigError(f"{source}: backend.kind must be local or submitit, got {backend['kind']!r}")
    for key in ("workers", "threads_per_worker"):
        value = backend[key]
        if (value is not None or key == "workers") and not _positive_int(value):
            raise ConfigError(f"{source}: backend.{key} must be a positive integer, got {value!r} "
                              f"({BACKEND_KEYS[key]})")
    if backend["workers"] > 1 and backend["kind"] != "local":
        raise ConfigError(f"{source}: backend.workers = {backend['workers']} runs jobs in local worker processes, "
                          f"but backend.kind is {backend['kind']}; drop workers (submitit runs jobs in parallel "
                          "itself: array_parallelism) or use kind: local")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_workers(backend: dict[str, Any], jobs: list[Job], source: str) -> None:
    """Local workers run single-device jobs only: a multi-device job starts processes of its own (DDP)."""
    if backend["workers"] == 1:
        return
    spread = next((job for job in jobs if multi_device(job)), None)
    if spread is not None:
        trainer = spread.profile.trainer
        raise ConfigError(f"{source}: backend.workers = {backend['workers']} runs several jobs at once, each in one "
                          f"process, but the jobs span several devices (trainer.devices = "
                          f"{trainer.get('devices', 1)!r}, trainer.num_nodes = {trainer.get('num_nodes', 1)!r}); "
                          "use workers: 1 for multi-device jobs, or trainer.devices=1")


# ---- reused weights -------------------------------------------------------------------------------------------
def _upstream_method(job: Job, name: str, methods: list[tuple[ComponentConfig, set[str]]],
                     loaded: dict[str, ComponentConfig]) -> ComponentConfig:
    """The method config named by ``job``'s ``weights_from``: the sweep's method of that name (a variant's full name,
    or the config name / path of exactly one of its methods), else the method config itself."""
    where = f"{job.method.source}: weights_from = {name!r} (method {job.method.name!r})"
    exact = [config for config, _ in methods if config.name == name]
    if exact:
        return exact[0]
    aliased = [config for config, aliases in methods if name in aliases]
    if len(aliased) > 1:
        raise ConfigError(f"{where}: the sweep has several variants of {name!r} "
                          f"({', '.join(config.name for config in aliased)}); name one of them")
    if aliased:
        return aliased[0]
    if name not in loaded:
        try:
            loaded[name] = load_component("methods", name)
        except ConfigError as error:
            raise ConfigError(f"{where} names neither a method of this sweep "
                              f"({', '.join(config.name for config, _ in methods)}) nor a method config: {error}") \
                from error
    config = loaded[name]
    same = [other for other, _ in methods if other.name == config.name]  # a path to a config of the sweep
    return same[0] if same else config


def _link_upstreams(jobs: list[Job], methods: list[tuple[ComponentConfig, set[str]]]) -> None:
    """Set ``Job.upstream`` of every job whose method reuses another method's weights (module docstring)."""
    sweep_jobs = {(job.method.name, job.dataset.name, job.seed): job for job in jobs}
    built: dict[tuple[str, str, int], Job] = {}  # upstreams outside the sweep, one per method x dataset x seed
    loaded: dict[str, ComponentConfig] = {}
    linked: set[int] = set()

    def link(job: Job, chain: list[Job]) -> None:
        if id(job) in linked:
            return
        target = job.method.target()
        name = target.weights_from(job.method.resolved()["init_args"]) \
            if isinstance(target, type) and issubclass(target, AnomalyModule) else None
        if name is not None:
            where = f"{job.method.source}: weights_from = {name!r} (method {job.method.name!r})"
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}: expected the name of a method config (a non-empty string)")
            method = _upstream_method(job, name, methods, loaded)
            ident = (method.name, job.dataset.name, job.seed)
            upstream = sweep_jobs.get(ident) or built.get(ident)
            if upstream is None and any(method is config for config, _ in methods):
                raise ConfigError(f"{where}: the sweep excludes {method.name} on dataset {job.dataset.name}, whose "
                                  f"job {job.method.name} evaluates; exclude {job.method.name} there too")
            if upstream is None:
                upstream = built[ident] = Job(method, job.dataset, job.profile, job.seed, job.evaluation)
            path = [*chain, job]
            if any(upstream is other for other in path):
                start = next(i for i, other in enumerate(path) if other is upstream)
                cycle = " -> ".join(other.method.name for other in [*path[start:], upstream])
                raise ConfigError(f"{where}: the jobs reuse each other's weights in a cycle ({cycle}); "
                                  "weights_from must lead to a method that trains")
            link(upstream, path)
            upstream_target = upstream.method.target()
            if not (isinstance(upstream_target, type) and issubclass(upstream_target, AnomalyModule)
                    and upstream_target.requires_training):
                raise ConfigError(f"{where}: method {upstream.method.name!r} does not train (requires_training = "
                                  "False), so its jobs leave no checkpoint to evaluate; name a method that trains")
            job.upstream = upstream
        linked.add(id(job))

    for job in jobs:
        link(job, [])


def _exclusions(rules: Any, methods: list[tuple[ComponentConfig, set[str]]],
                datasets: list[tuple[ComponentConfig, set[str]]], source: str) -> list[dict[str, str]]:
    """The checked ``exclude`` rules: mappings with ``method`` and / or ``dataset``, each a name (config or
    variant) of this sweep, so that a typo is an error rather than a pair silently left in. A rule naming a
    registered config that is not in the grid (``methods=[ae]`` on the command line narrows a sweep that
    excludes ``ascnet``) excludes nothing and is dropped."""
    if not isinstance(rules, list):
        raise ConfigError(f"{source}: exclude must be a list of {{method: name, dataset: name}} mappings")
    known = {"method": set().union(*(names for _, names in methods)),
             "dataset": set().union(*(names for _, names in datasets))}
    active = []
    for rule in rules:
        if not isinstance(rule, dict) or not rule or set(rule) - set(known):
            raise ConfigError(f"{source}: exclude entry {rule!r}: expected a mapping with keys method and / or dataset")
        absent = [(key, name) for key, name in rule.items() if name not in known[key]]
        for key, name in absent:
            if not _is_registered(f"{key}s", name):
                raise ConfigError(f"{source}: exclude entry {rule!r}: no {key} {name!r} in this sweep; "
                                  f"{key}s: {', '.join(sorted(known[key]))}")
        if not absent:
            active.append(rule)
    return active


def _is_registered(kind: str, name: Any) -> bool:
    try:
        find_config(kind, str(name))
    except ConfigError:
        return False
    return True


def _matches(rule: dict[str, str], method_names: set[str], dataset_names: set[str]) -> bool:
    return rule.get("method", next(iter(method_names))) in method_names and \
        rule.get("dataset", next(iter(dataset_names))) in dataset_names


# ---- grid entries ---------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A short YAML-like rendering of a grid value for variant names: ``3``, ``-1.0``, ``1e-05``, ``true``,
    ``null``, ``l1``, ``[0.5,0.999]``, ``{a:1}`` (no spaces)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def variant_name(config: str, arguments: dict[str, Any]) -> str:
    """``digits@held_out_class=3``: the config name, then ``key=value`` pairs in the given order."""
    return config + "@" + ",".join(f"{key}={format_value(value)}" for key, value in arguments.items())


def _entry_parts(kind: str, entry: Any, source: str) -> tuple[str, dict[str, Any] | None]:
    """The config name or path of a sweep entry and its arguments (None for a plain entry)."""
    where = f"{source}: {kind} entry {entry!r}"
    if isinstance(entry, list):
        raise ConfigError(f"{where}: expected a config name or a mapping {{name: {{argument: values}}}}")
    if not isinstance(entry, dict):
        return str(entry), None
    if len(entry) != 1:
        raise ConfigError(f"{where}: a grid entry is a mapping with exactly one key (the config name or path), got "
                          f"{list(entry)}; indent the arguments under the name, e.g. - ae: {{lr: [0.001, 0.01]}}")
    name, arguments = next(iter(entry.items()))
    if not isinstance(arguments, dict) or not arguments:
        raise ConfigError(f"{where}: the value of {name!r} must be a non-empty mapping of init_args entries, "
                          f"got {arguments!r}")
    for key, value in arguments.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: argument names must be strings, got {key!r}")
        if isinstance(value, list) and not value:
            raise ConfigError(f"{where}: {key}: an empty list gives no variant; a grid axis needs at least one value")
    return str(name), arguments


def _expand(kind: str, entry: Any, source: str) -> tuple[set[str], list[ComponentConfig]]:
    """The names an override may use for this entry (config name, entry text) and its variants."""
    name, arguments = _entry_parts(kind, entry, source)
    base = load_component(kind, name)
    aliases = {name, base.name}
    if arguments is None:
        return aliases, [base]
    axes = {key: value for key, value in arguments.items() if isinstance(value, list)}
    fixed = {key: value for key, value in arguments.items() if not isinstance(value, list)}
    named = list(axes) or list(fixed)
    for key in named:
        values = axes.get(key, [arguments[key]])
        bad = next((v for v in values if any(c in "/\\\0" or c.isspace() for c in format_value(v))), None)
        if bad is not None:
            raise ConfigError(f"{source}: {kind} entry {name!r}: {key} = {bad!r} cannot be part of a variant name "
                              "(it names the run folders: no '/', '\\', NUL or whitespace); write a separate "
                              f"config file with this value (configs/{kind}/<name>.yaml) and list that instead")
    variants = []
    for combination in itertools.product(*axes.values()):
        values = {**fixed, **dict(zip(axes, combination, strict=True))}
        values = {key: copy.deepcopy(values[key]) for key in arguments}  # the order written
        variant = replace(base, name=variant_name(base.name, {key: values[key] for key in named}),
                          init_args={**copy.deepcopy(base.init_args), **values})
        variant.source = f"{source}: {kind} grid entry {variant.name!r} (from {base.source})"
        try:
            variant.validate()
        except ConfigError as error:
            if not any(f"init_args.{key} =" in str(error) for key in axes):
                raise
            raise ConfigError(f"{error} (in a sweep grid entry a list is a grid axis: write a list-valued "
                              "argument as a list of lists, e.g. betas: [[0.5, 0.999]])") from error
        variants.append(variant)
    return aliases, variants


def expand_entry(kind: str, entry: Any, source: str = "<memory>") -> list[ComponentConfig]:
    """The components of one ``methods`` / ``datasets`` entry of a sweep (``kind``): a config name or path gives
    its config; a grid entry ``{name: {argument: value or [values]}}`` one validated copy per variant, named as in
    the module docstring. ConfigError (naming ``source`` and the key) for malformed entries and arguments."""
    return _expand(kind, entry, source)[1]


def _expand_all(kind: str, entries: list[Any], source: str) -> list[tuple[ComponentConfig, set[str]]]:
    """Every component of a sweep's ``methods`` or ``datasets``, each with the names that override it."""
    components: list[tuple[ComponentConfig, set[str]]] = []
    seen: dict[str, Any] = {}
    for entry in entries:
        aliases, variants = _expand(kind, entry, source)
        for variant in variants:
            if variant.name in seen:
                raise ConfigError(f"{source}: {kind}: {variant.name!r} appears twice (entries {seen[variant.name]!r} "
                                  f"and {entry!r}); names must differ (put an argument that tells them apart in "
                                  "the grid, e.g. lr: [0.01])")
            seen[variant.name] = entry
            components.append((variant, aliases | {variant.name}))
    return components


def _override_component(text: str, head: str, components: list[tuple[ComponentConfig, set[str]]]) -> None:
    """``methods.<name>.<arg>=value``: ``<name>`` a variant name (may hold ``.`` and ``=``) or a config name."""
    names = {name for _, aliases in components for name in aliases}
    key = text.strip().removeprefix(f"{head}.")
    name = max((n for n in names if key.startswith(f"{n}.")), key=len, default=None)
    if name is None and (key in names or key.partition("=")[0] in names):
        raise ConfigError(f"override {text!r}: no argument given; expected {head}.<name>.<argument>=<value>")
    if name is None:
        available = [config.name for config, _ in components]
        bases = sorted(names - set(available))
        guess = key.rsplit("=", 1)[0].rsplit(".", 1)[0]
        raise ConfigError(f"override {text!r}: {guess!r} is not one of this sweep's {head}: {available}"
                          + (f" (or a config name: {bases})" if bases else "")
                          + f"; expected {head}.<name>.<argument>=<value>")
    path, value = parse_override(key[len(name) + 1:])
    if len(path) != 1:
        raise ConfigError(f"override {text!r}: expected {head}.<name>.<argument>=<value>, got argument "
                          f"{'.'.join(path)!r}")
    for config, aliases in components:
        if name in aliases:
            config.init_args = {**config.init_args, path[0]: value}
            config.source = f"{config.source} + override {text!r}"
            config.validate()


def _check_keys(data: dict[str, Any], allowed: dict[str, str], source: str) -> None:
    unknown = set(data) - set(allowed)
    if unknown:
        options = "; ".join(f"{k}: {v}" for k, v in allowed.items())
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; valid keys: {options}")


def sweep_dir(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / name
