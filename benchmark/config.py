"""YAML configuration: components as ``class_path`` + ``init_args`` (Lightning / jsonargparse style).

``configs/methods/<name>.yaml`` and ``configs/datasets/<name>.yaml`` each hold one component::

    class_path: lightning_modules.ae.AutoEncoder
    init_args:
      lr: 1.0e-4

``configs/trainers/<name>.yaml`` holds a trainer profile: ``trainer`` (``pytorch_lightning.Trainer`` arguments) and
the harness's own training options (see ``TRAINER_PROFILE_KEYS``). Every key is checked against the target's
signature and annotation before anything runs; errors name the file and the key.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from benchmark.metrics.settings import EvaluationSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
COMPONENT_KEYS = {"class_path", "init_args"}
TRAINER_PROFILE_KEYS = {
    "trainer": "arguments of pytorch_lightning.Trainer",
    "early_stopping_patience": "epochs without val/loss improvement before stopping (null: off)",
    "image_grid_every_n_epochs": "how often validation image grids go to TensorBoard",
}


class ConfigError(ValueError):
    """A configuration problem, reported before any training starts."""


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def available(kind: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the configs of one kind (``methods``, ``datasets``, ``trainers``, ``sweeps``)."""
    return sorted(p.stem for p in (config_dir / kind).glob("*.yaml"))


def find_config(kind: str, name: str, config_dir: Path = CONFIG_DIR) -> Path:
    """A registered name (``ae``) or a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = config_dir / kind / f"{name}.yaml"
    if not path.is_file():
        singular = kind.rstrip("s")
        raise ConfigError(f"unknown {singular} {name!r}; available: {', '.join(available(kind, config_dir)) or 'none'} "
                          f"(or give a path to a YAML file)")
    return path


def import_object(class_path: str, source: str) -> Any:
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        raise ConfigError(f"{source}: class_path {class_path!r} must be a dotted path like 'package.module.Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{source}: cannot import module {module_name!r} of class_path {class_path!r}: {error}") \
            from error
    if not hasattr(module, attr):
        raise ConfigError(f"{source}: module {module_name!r} has no attribute {attr!r} (class_path {class_path!r})")
    return getattr(module, attr)


def matches_annotation(value: Any, annotation: Any) -> bool:
    """Loose runtime check of YAML values against common annotations (unknown annotations pass)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches_annotation(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches_annotation(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(matches_annotation(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(matches_annotation(v, args[1]) for v in value.values()))
    return True


def check_arguments(target: Any, arguments: dict[str, Any], source: str, where: str = "init_args") -> None:
    """Unknown keys and values of the wrong type are errors naming ``source`` and the key."""
    signature = inspect.signature(target)
    params = {n: p for n, p in signature.parameters.items() if n != "self"}
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable forward references: skip type checks, keep key checks
        hints = {}
    for key, value in arguments.items():
        if key not in params:
            if accepts_kwargs:
                continue
            valid = ", ".join(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
            raise ConfigError(f"{source}: unknown key {where}.{key} for {getattr(target, '__qualname__', target)}; "
                              f"valid keys: {valid}")
        if key in hints and not matches_annotation(value, hints[key]):
            raise ConfigError(f"{source}: {where}.{key} = {value!r} does not match the expected type {hints[key]}")


@dataclass
class ComponentConfig:
    """A method or dataset: the class to build and its arguments, plus where they came from."""

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @classmethod
    def from_file(cls, path: Path, name: str | None = None) -> ComponentConfig:
        data = load_yaml(path)
        unknown = set(data) - COMPONENT_KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected class_path and init_args")
        if "class_path" not in data:
            raise ConfigError(f"{path}: missing key class_path")
        init_args = data.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise ConfigError(f"{path}: init_args must be a mapping")
        config = cls(name or path.stem, data["class_path"], dict(init_args), str(path))
        config.validate()
        return config

    def target(self) -> type:
        return import_object(self.class_path, self.source)

    def validate(self) -> None:
        check_arguments(self.target(), self.init_args, self.source)

    def instantiate(self, **linked: Any) -> Any:
        """Build the object; ``linked`` values (e.g. image size from the dataset) fill arguments not set in YAML."""
        params = inspect.signature(self.target()).parameters
        extra = {k: v for k, v in linked.items() if k in params and k not in self.init_args}
        return self.target()(**self.init_args, **extra)

    def resolved(self, **linked: Any) -> dict[str, Any]:
        params = inspect.signature(self.target()).parameters
        args = {k: p.default for k, p in params.items()
                if k != "self" and p.default is not inspect.Parameter.empty}
        args.update({k: v for k, v in linked.items() if k in params})
        args.update(self.init_args)
        return {"class_path": self.class_path, "init_args": args}


@dataclass
class TrainerProfile:
    """Trainer arguments and harness training options of one profile (``configs/trainers/*.yaml``)."""

    name: str
    trainer: dict[str, Any] = field(default_factory=dict)
    early_stopping_patience: int | None = None
    image_grid_every_n_epochs: int = 5
    source: str = "<memory>"

    @classmethod
    def from_file(cls, path: Path) -> TrainerProfile:
        data = load_yaml(path)
        unknown = set(data) - set(TRAINER_PROFILE_KEYS)
        if unknown:
            options = "; ".join(f"{k}: {v}" for k, v in TRAINER_PROFILE_KEYS.items())
            raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid keys: {options}")
        trainer = data.get("trainer") or {}
        check_arguments(pl.Trainer, trainer, str(path), where="trainer")
        for key in ("logger", "callbacks", "default_root_dir", "enable_checkpointing"):
            if key in trainer:
                raise ConfigError(f"{path}: trainer.{key} is set by the harness per run; remove it from the profile")
        patience = data.get("early_stopping_patience")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ConfigError(f"{path}: early_stopping_patience must be a positive integer or null, got {patience!r}")
        every = data.get("image_grid_every_n_epochs", 5)
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"{path}: image_grid_every_n_epochs must be a positive integer, got {every!r}")
        return cls(path.stem, dict(trainer), patience, every, str(path))


def load_component(kind: str, name: str, config_dir: Path = CONFIG_DIR) -> ComponentConfig:
    path = find_config(kind, name, config_dir)
    return ComponentConfig.from_file(path, name=path.stem)


def load_trainer_profile(name: str, config_dir: Path = CONFIG_DIR) -> TrainerProfile:
    return TrainerProfile.from_file(find_config("trainers", name, config_dir))


def load_evaluation(name: str, config_dir: Path = CONFIG_DIR) -> EvaluationSettings:
    """An evaluation protocol (``configs/evaluation/<name>.yaml`` or a path); errors name the file and key."""
    path = find_config("evaluation", name, config_dir)
    try:
        return EvaluationSettings.from_mapping(load_yaml(path), name=path.stem)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{path}: {error}") from error
