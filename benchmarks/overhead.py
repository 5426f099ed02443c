"""Lightning overhead: the harness's training step vs a plain PyTorch loop on the same model and batches, one run.

    python benchmarks/overhead.py [--method ae] [--dataset synthetic_brain] [--profile cpu] [--batches 0]
                                  [--epochs 1] [--repeats 11] [--threads N] [--mode both] [--variants]
                                  [--fixed-cost] [--cprofile]

Setup (not timed):

* the training batches are read once from the dataset's train loader and kept in memory: ``--batches`` of them
  (cycling the shuffled loader), by default one epoch of it (default dataset: 29 batches of 32 x 1 x 64 x 64, the
  last one of 7 slices). Both contenders iterate their own ``DataLoader(batches, batch_size=None)`` over that list,
  so data loading is excluded from both (the cost of such a loader, some 0.1 ms per batch, is printed);
* the models are built from the method config with the same seed (identical initial weights, checked).

Contenders:

* ``plain PyTorch``: ``model.train()``; per batch ``loss = model.reconstruction_loss(image, model(image))`` (the
  forward and loss of ``AutoEncoder.training_step``, without ``self.log``), ``opt.zero_grad()``, ``loss.backward()``,
  ``opt.step()``, with the optimizer that ``configure_optimizers`` returns (built once);
* ``lightning (harness)``: a fresh ``pl.Trainer`` per measurement from the harness's own
  ``benchmark/job.py::_build_trainer`` (``progress=False``, i.e. ``run_benchmark.py ... --quiet``): the trainer
  profile's options (``--profile cpu``: ``log_every_n_steps: 5``, ``deterministic: true``, ...), its callbacks
  (``EvaluationCallback``, ``ImageGridCallback``, ``FiniteLossGuard``, ``RandomStateCheckpoint``,
  ``LearningRateMonitor``, ``ModelCheckpoint(save_last=True, save_top_k=1)`` at the time of writing; the run prints
  the list) and its ``TensorBoardLogger``, writing into a temporary folder. Training only: the profile gets
  ``limit_val_batches=0`` and no early-stopping patience (``EarlyStopping`` needs ``val/loss``), there is no
  validation loader, and ``ModelCheckpoint`` gets ``monitor=None``: it writes ``best-epochNNN.ckpt`` and
  ``last.ckpt`` at the end of every epoch, as the harness does in every epoch where ``val/loss`` improves (with
  Lightning 2.6 it writes neither in the other epochs: ``save_last`` only follows a top-k save).
  ``max_epochs=--epochs``: both run the same number of steps.

Timing, wall (``time.perf_counter``) and CPU (``time.process_time``, all threads of the process). For Lightning the
first callback records ``on_train_start`` and ``on_train_end``: the ``loop`` time holds every step, the logging every
``log_every_n_steps`` steps and the checkpoints at the end of every epoch, but not the fit's setup and teardown
(Trainer connectors, ``configure_optimizers``, logger finalisation), which are printed apart (paid once per job; a
default job trains 580 steps). The headline ratio is ``lightning loop / plain`` per step. Two schedules
(``--mode``):

* ``alternating``: whole measurements of ``--epochs`` epochs, interleaved plain, lightning, lightning, plain, ...
  (the order alternates between rounds); ratio of each round's pair, median over ``--repeats`` rounds;
* ``paired``: one fit per round, and a callback runs one plain step (on the plain model, from the plain loader)
  in ``on_train_batch_start`` before every Lightning step; plain time = the sum of those calls, Lightning time = the
  loop time minus them. The two alternate step by step, so load from other tenants hits both alike: on a shared
  machine this is the schedule to trust. A second table pairs the steps one by one (Lightning's step on batch ``i``
  = from the end of plain step ``i`` to the start of plain step ``i + 1``), pooled over the rounds: the median
  per-step ratio and extra ms, the extra time at each epoch's boundary (last step, checkpoints, next epoch's start)
  and the ratio rebuilt from those medians, which resists bursts of load better than a ratio of sums.

Both run under the same torch flags: the profile's ``deterministic: true`` makes the Trainer call
``torch.use_deterministic_algorithms(True)``, a process-wide switch, so a Trainer is built (warm-up) before any
measurement and the plain loop runs with it too (checked). ``--threads`` pins ``torch.set_num_threads`` (checked
inside the Lightning loop too). One warm-up epoch of each contender precedes the measurements.

``--variants`` adds Lightning runs with parts of the harness removed, to locate overhead: no logger (and so no
``LearningRateMonitor``), no ``ModelCheckpoint``, none of the harness's callbacks and no logger (bare
``pl.Trainer``), and the harness trainer with a model whose ``training_step`` does not call ``self.log``.
``--fixed-cost`` times Lightning's own cost per step apart from the model's compute: the same contenders with a
one-parameter probe model (``FixedCostProbe``: the AE's loss and its ``self.log`` call, no convolutions), 10 epochs
per measurement; with the time of one ``trainer.save_checkpoint`` of the real model (always printed) it predicts
the ratio. ``--cprofile`` profiles one extra harness fit with cProfile and prints the top functions. Prints Markdown
tables for docs/performance.md. Timings on shared machines are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmark.config import ComponentConfig, TrainerProfile, load_component, load_trainer_profile
from benchmark.job import Job, _build_trainer
from lightning_modules.base import AnomalyModule, AnomalyOutput

Batch = dict[str, Any]
PLAIN = "plain PyTorch"
JOB_STEPS = 580  # a default job: 20 epochs x 29 steps


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


# ---- setup ---------------------------------------------------------------------------------------------------------
def load_batches(dataset: ComponentConfig, n_batches: int, seed: int) -> tuple[list[Batch], int]:
    """``n_batches`` training batches in memory (cycling the shuffled train loader; 0: one epoch of it) and the
    loader's epoch length."""
    datamodule = dataset.instantiate(progress=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(seed)
    loader = datamodule.train_dataloader()
    n_batches = n_batches or len(loader)
    batches: list[Batch] = []
    while len(batches) < n_batches:
        for batch in loader:
            batches.append(batch)
            if len(batches) == n_batches:
                break
    return batches, len(loader)


def build_model(method: ComponentConfig, links: dict[str, int], seed: int) -> AnomalyModule:
    pl.seed_everything(seed, verbose=False)
    model = method.instantiate(**links)
    if not isinstance(model, AnomalyModule):
        raise TypeError(f"{method.class_path} is not an AnomalyModule")
    return model


def batch_loader(batches: list[Batch]) -> DataLoader:
    """The in-memory batches, one per item, unchanged (``batch_size=None``: no collation)."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)


def loader_cost_ms(batches: list[Batch], repeats: int = 10) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for _batch in batch_loader(batches):
            pass
    return (time.perf_counter() - start) / (repeats * len(batches)) * 1e3


# ---- plain PyTorch -------------------------------------------------------------------------------------------------
def forward_loss(model: AnomalyModule) -> Callable[[Batch], torch.Tensor]:
    """Forward + loss of the method's ``training_step`` without ``self.log``."""
    if not hasattr(model, "reconstruction_loss"):
        raise NotImplementedError(f"{type(model).__name__}: write its plain forward + loss here")

    def step(batch: Batch) -> torch.Tensor:
        image = batch["image"]
        return model.reconstruction_loss(image, model(image))

    return step


class PlainLoop:
    def __init__(self, model: AnomalyModule, batches: list[Batch]) -> None:
        self.model, self.batches = model, batches
        self.optimizer = model.configure_optimizers()
        self.forward_loss = forward_loss(model)

    def step(self, batch: Batch) -> None:
        loss = self.forward_loss(batch)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def run(self, epochs: int) -> dict[str, float]:
        self.model.train()
        wall, cpu = clocks()
        for _ in range(epochs):
            for batch in batch_loader(self.batches):
                self.step(batch)
        wall_end, cpu_end = clocks()
        return {"wall": wall_end - wall, "cpu": cpu_end - cpu}


# ---- Lightning -----------------------------------------------------------------------------------------------------
class Clock(pl.Callback):
    """First callback of the list: start and end of the training loop, and the torch settings inside it."""

    def __init__(self) -> None:
        self.start = self.end = (0.0, 0.0)
        self.threads = 0
        self.deterministic = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.threads = torch.get_num_threads()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.start = clocks()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = clocks()


class PairedPlain(pl.Callback):
    """Runs one plain step (own model, own loader over the same batches) before every Lightning step and keeps the
    wall and CPU clocks around each (``steps``) and around creating the plain loader's iterator (``other``)."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.steps: list[tuple[float, float, float, float]] = []
        self.other = [0.0, 0.0]
        self.iterator: Iterator[Batch] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wall, cpu = clocks()
        self.plain.model.train()
        self.iterator = iter(batch_loader(self.plain.batches))
        wall_end, cpu_end = clocks()
        self.other[0] += wall_end - wall
        self.other[1] += cpu_end - cpu

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        assert self.iterator is not None
        wall, cpu = clocks()
        self.plain.step(next(self.iterator))
        self.steps.append((wall, cpu, *clocks()))

    def summary(self, loop_wall: float, loop_cpu: float, steps_per_epoch: int) -> dict[str, Any]:
        """Totals, and the step pairs: plain step ``i`` and the Lightning step on the same batch, i.e. from the end
        of plain step ``i`` to the start of plain step ``i + 1`` (the last step of an epoch is left out: its
        interval also holds the epoch's end and the next epoch's start)."""
        plain_wall = sum(s[2] - s[0] for s in self.steps) + self.other[0]
        plain_cpu = sum(s[3] - s[1] for s in self.steps) + self.other[1]
        pairs = [((self.steps[i + 1][0] - self.steps[i][2]) * 1e3, (self.steps[i][2] - self.steps[i][0]) * 1e3)
                 for i in range(len(self.steps) - 1) if (i + 1) % steps_per_epoch]
        lightning_wall = loop_wall - plain_wall
        boundary = (lightning_wall - plain_wall) * 1e3 - sum(ms - plain_ms for ms, plain_ms in pairs)
        return {"wall": lightning_wall, "cpu": loop_cpu - plain_cpu, "plain_wall": plain_wall,
                "plain_cpu": plain_cpu, "pairs": pairs, "boundary_extra_ms": boundary}


@dataclass
class Variant:
    name: str
    logger: bool = True
    checkpoint: bool = True
    harness_callbacks: bool = True
    log_in_step: bool = True


HARNESS = Variant("lightning (harness)")
VARIANTS = [
    Variant("lightning, no TensorBoard logger (nor LearningRateMonitor)", logger=False),
    Variant("lightning, no ModelCheckpoint", checkpoint=False),
    Variant("lightning, bare Trainer (no logger, none of the harness's callbacks)", logger=False, checkpoint=False,
            harness_callbacks=False),
    Variant("lightning (harness), no self.log in training_step", log_in_step=False),
]


def training_job(method: ComponentConfig, dataset: ComponentConfig, profile: TrainerProfile, seed: int) -> Job:
    """The harness's job with the profile made training-only: no validation, hence no ``EarlyStopping``."""
    trainer = {**profile.trainer, "limit_val_batches": 0, "num_sanity_val_steps": 0}
    return Job(method, dataset, replace(profile, trainer=trainer, early_stopping_patience=None), seed)


def build_trainer(job: Job, variant: Variant, model: AnomalyModule, run_dir: Path, epochs: int,
                  first: list[pl.Callback]) -> pl.Trainer:
    """The harness's own ``benchmark/job.py::_build_trainer`` (its callbacks, logger and Trainer options, no progress
    bar), for ``epochs`` epochs of training; ``ModelCheckpoint`` gets ``monitor=None`` (best + last every epoch, as in
    an epoch where ``val/loss`` improves); a variant then drops parts of it; ``first`` callbacks go in front."""
    job = replace(job, profile=replace(job.profile, trainer={**job.profile.trainer, "max_epochs": epochs}))
    trainer, _ = _build_trainer(job, model, run_dir, progress=False)
    kept: list[pl.Callback] = []
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            if not variant.checkpoint:
                continue
            callback.monitor = None
        elif isinstance(callback, LearningRateMonitor) and not variant.logger:
            continue  # it refuses to run without a logger
        elif not variant.harness_callbacks:
            continue
        kept.append(callback)
    trainer.callbacks = [*first, *kept]
    if not variant.logger:
        trainer.loggers = []
    return trainer


CALLBACK_HOOKS = [name for name in vars(pl.Callback)
                  if name.startswith("on_") or name in ("setup", "teardown", "state_dict", "load_state_dict")]


def timed_hook(hook: Callable[..., Any], key: str, totals: dict[str, float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return hook(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    return timed


def time_hooks(callbacks: list[pl.Callback], totals: dict[str, float]) -> None:
    """Wrap every hook a callback overrides so that its wall time adds up in ``totals["Class.hook"]``."""
    for callback in callbacks:
        for name in CALLBACK_HOOKS:
            if getattr(type(callback), name, None) is not getattr(pl.Callback, name):
                key = f"{type(callback).__name__}.{name}"
                setattr(callback, name, timed_hook(getattr(callback, name), key, totals))


class LightningLoop:
    def __init__(self, model: AnomalyModule, batches: list[Batch], job: Job, variant: Variant, workdir: Path) -> None:
        self.model, self.batches, self.job, self.variant, self.workdir = model, batches, job, variant, workdir
        if not variant.log_in_step:
            step = forward_loss(model)
            model.training_step = lambda batch, batch_idx: step(batch)  # type: ignore[method-assign]
        self.runs = 0
        self.trainer: pl.Trainer | None = None  # the last one, for checkpoint timing
        self.callbacks: list[str] = []
        self.logger = ""
        self.hook_times: dict[str, float] | None = None  # set to a dict to time the harness callbacks' hooks
        self.threads: set[int] = set()
        self.deterministic: set[bool] = set()

    def run(self, epochs: int, paired: PlainLoop | None = None,
            profiler: cProfile.Profile | None = None) -> dict[str, Any]:
        self.runs += 1
        run_dir = self.workdir / f"{self.variant.name.split(' ')[0]}_{id(self)}_{self.runs}"
        clock = Clock()
        pairing = PairedPlain(paired) if paired is not None else None
        wall, _ = clocks()
        trainer = build_trainer(self.job, self.variant, self.model, run_dir, epochs,
                                [clock] if pairing is None else [clock, pairing])
        if self.hook_times is not None:
            time_hooks([c for c in trainer.callbacks if c is not clock and c is not pairing], self.hook_times)
        fit_wall, _ = clocks()
        if profiler is not None:
            profiler.enable()
        trainer.fit(self.model, train_dataloaders=batch_loader(self.batches))
        if profiler is not None:
            profiler.disable()
        end_wall, _ = clocks()
        if trainer.global_step != epochs * len(self.batches):
            raise RuntimeError(f"{self.variant.name}: {trainer.global_step} steps, expected "
                               f"{epochs * len(self.batches)}")
        self.trainer = trainer
        self.callbacks = [type(c).__name__ for c in trainer.callbacks if c is not clock and c is not pairing]
        self.logger = type(trainer.logger).__name__ if trainer.logger else "none"
        self.threads.add(clock.threads)
        self.deterministic.add(clock.deterministic)
        loop_wall, loop_cpu = clock.end[0] - clock.start[0], clock.end[1] - clock.start[1]
        result: dict[str, Any] = {"wall": loop_wall, "cpu": loop_cpu, "construct": fit_wall - wall,
                                  "setup_teardown": (end_wall - fit_wall) - loop_wall}
        if pairing is not None:
            result.update(pairing.summary(loop_wall, loop_cpu, len(self.batches)))
        return result


# ---- schedules -----------------------------------------------------------------------------------------------------
def alternating(plain: PlainLoop, loops: list[LightningLoop], epochs: int, repeats: int
                ) -> dict[str, list[dict[str, Any]]]:
    contenders: list[tuple[str, Callable[[], dict[str, Any]]]] = [(PLAIN, lambda: plain.run(epochs))]
    contenders += [(loop.variant.name, lambda loop=loop: loop.run(epochs)) for loop in loops]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
    for round_ in range(repeats):
        for name, run in contenders if round_ % 2 == 0 else contenders[::-1]:
            results[name].append(run())
        progress("alternating", round_, repeats, results, epochs * len(plain.batches))
    return results


def paired(plain: PlainLoop, loops: list[LightningLoop], epochs: int, repeats: int
           ) -> dict[str, list[dict[str, Any]]]:
    """Per round and Lightning contender: one fit with a plain step before each Lightning step."""
    results: dict[str, list[dict[str, Any]]] = {PLAIN: []}
    results.update({loop.variant.name: [] for loop in loops})
    for round_ in range(repeats):
        for loop in loops if round_ % 2 == 0 else loops[::-1]:
            result = loop.run(epochs, paired=plain)
            results[loop.variant.name].append(result)
            if loop is loops[0]:  # the plain reference of the table: the steps paired with the harness
                results[PLAIN].append({"wall": result["plain_wall"], "cpu": result["plain_cpu"]})
        progress("paired", round_, repeats, results, epochs * len(plain.batches))
    return results


def progress(mode: str, round_: int, repeats: int, results: dict[str, list[dict[str, Any]]], steps: int) -> None:
    latest = ", ".join(f"{name} {runs[-1]['wall'] / steps * 1e3:.1f}" for name, runs in results.items() if runs)
    print(f"{mode} round {round_ + 1}/{repeats}: {latest} ms/step (wall)", file=sys.stderr, flush=True)


# ---- Lightning's own cost per step, without the model's compute ----------------------------------------------------
class FixedCostProbe(AnomalyModule):
    """A one-parameter stand-in with ``AutoEncoder.training_step``'s shape (forward, the same loss, the same
    ``self.log`` call): its Lightning step minus its plain step is Lightning's own cost per step, measured without
    the noise of 100+ ms of convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, image: Tensor) -> Tensor:
        return image * self.scale

    def reconstruction_loss(self, image: Tensor, reconstruction: Tensor) -> Tensor:
        return (image - reconstruction).abs().flatten(1).sum(dim=1).mean()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        image = batch["image"]
        loss = self.reconstruction_loss(image, self(image))
        self.log("train/loss", loss, prog_bar=True, batch_size=image.shape[0])
        return loss

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        anomaly_map = (image - self(image)).abs().mean(dim=1, keepdim=True)
        return AnomalyOutput(anomaly_map, self.reduce_map(anomaly_map))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def checkpoint_ms(loop: LightningLoop, workdir: Path, repeats: int = 7) -> tuple[float, float]:
    """Median time of ``trainer.save_checkpoint`` (what ModelCheckpoint calls per file) and the file's size in MB."""
    assert loop.trainer is not None
    times = []
    for i in range(repeats):
        path = workdir / f"timing_{id(loop)}_{i}.ckpt"
        start = time.perf_counter()
        loop.trainer.save_checkpoint(path)
        times.append(time.perf_counter() - start)
    size = path.stat().st_size / 1e6
    return statistics.median(times) * 1e3, size


def fixed_cost(batches: list[Batch], job: Job, variants: list[Variant], workdir: Path, epochs: int,
               repeats: int) -> tuple[dict[str, list[float]], tuple[float, float], dict[str, float]]:
    """ms per step of the probe: plain loop and each Lightning variant, alternating, ``repeats`` rounds; then the
    checkpoint time of the probe and, from two more harness fits, ms per step in each harness callback's hooks."""
    pl.seed_everything(0, verbose=False)
    plain = PlainLoop(FixedCostProbe(), batches)
    loops = [LightningLoop(FixedCostProbe(), batches, job, v, workdir) for v in variants]
    for contender in [plain, *loops]:
        contender.run(1)
    steps = epochs * len(batches)
    results: dict[str, list[float]] = {PLAIN: [], **{loop.variant.name: [] for loop in loops}}
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [(PLAIN, lambda: plain.run(epochs))]
    runs += [(loop.variant.name, lambda loop=loop: loop.run(epochs)) for loop in loops]
    for round_ in range(repeats):
        for name, run in runs if round_ % 2 == 0 else runs[::-1]:
            results[name].append(run()["wall"] / steps * 1e3)
        progress("fixed cost", round_, repeats, {k: [{"wall": v[-1] * steps / 1e3}] for k, v in results.items()},
                 steps)
    checkpoint = checkpoint_ms(loops[0], workdir)
    loops[0].hook_times = {}
    for _ in range(2):
        loops[0].run(epochs)
    hooks = {name: total / (2 * steps) * 1e3 for name, total in loops[0].hook_times.items()}
    return results, checkpoint, hooks


def fixed_cost_table(results: dict[str, list[float]], epochs: int, steps_per_epoch: int) -> None:
    print(f"\nLightning's own cost per step (one-parameter probe with the same training_step, batches and trainers; "
          f"{epochs} epochs of {steps_per_epoch} steps per measurement): median (min-max) ms per step\n")
    print("| contender | ms / step | extra ms / step over plain (median of rounds) |")
    print("|---|---:|---:|")
    for name, values in results.items():
        extra = [v - p for v, p in zip(values, results[PLAIN], strict=True)]
        print(f"| {name} | {spread(values, 3)} | {spread(extra, 3)} |")


# ---- report --------------------------------------------------------------------------------------------------------
def spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(mode: str, results: dict[str, list[dict[str, Any]]], steps: int, epochs: int) -> None:
    """Per contender: time per step and ratio to the plain loop of the same round (in ``paired`` mode: the plain
    steps paired with that contender's own fit)."""
    plain = results[PLAIN]
    print(f"\n{mode}: median over rounds (min-max); ms per step; ratio = contender / plain of the same round\n")
    print("| contender | wall ms / step | CPU ms / step | ratio (wall) | ratio (CPU) | extra wall ms / step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        reference = [{"wall": r["plain_wall"], "cpu": r["plain_cpu"]} if "plain_wall" in r else p
                     for r, p in zip(runs, plain, strict=True)]
        wall = [r["wall"] / steps * 1e3 for r in runs]
        cpu = [r["cpu"] / steps * 1e3 for r in runs]
        ratio_wall = [r["wall"] / p["wall"] for r, p in zip(runs, reference, strict=True)]
        ratio_cpu = [r["cpu"] / p["cpu"] for r, p in zip(runs, reference, strict=True)]
        extra = [(r["wall"] - p["wall"]) / steps * 1e3 for r, p in zip(runs, reference, strict=True)]
        print(f"| {name} | {spread(wall, 1)} | {spread(cpu, 1)} | {spread(ratio_wall, 3)} | "
              f"{spread(ratio_cpu, 3)} | {spread(extra, 2)} |")
    if mode != "paired":
        return
    print(f"\n{mode}, step by step: Lightning step vs the plain step on the same batch just before it, all rounds "
          "pooled (epochs' last steps apart: 'epoch boundary')\n")
    print("| contender | step pairs | per-step ratio, median (IQR) | extra ms / step, median (IQR) | "
          "epoch boundary extra ms / epoch | ratio from medians |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        if name == PLAIN:
            continue
        pairs = [pair for r in runs for pair in r["pairs"]]
        ratios = [ms / plain_ms for ms, plain_ms in pairs]
        extras = [ms - plain_ms for ms, plain_ms in pairs]
        boundary = [r["boundary_extra_ms"] / epochs for r in runs]
        plain_epoch_ms = statistics.median(r["plain_wall"] for r in runs) / epochs * 1e3
        regular = steps // epochs - 1  # step pairs per epoch
        step_extra = statistics.median(extras) if extras else 0.0  # no pairs with one batch per epoch
        estimate = 1 + (step_extra * regular + statistics.median(boundary)) / plain_epoch_ms
        print(f"| {name} | {len(pairs)} | {quartiles(ratios, 3)} | {quartiles(extras, 2)} | {spread(boundary, 1)} | "
              f"{estimate:.3f} |")


def quartiles(values: list[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{q2:.{digits}f} ({q1:.{digits}f} to {q3:.{digits}f})"


def setup_table(results: dict[str, list[dict[str, Any]]], plain_step_ms: float) -> None:
    print(f"\nLightning fit, outside the loop: median (min-max) ms; share = (construction + setup + teardown) / "
          f"({JOB_STEPS} plain steps of {plain_step_ms:.1f} ms)\n")
    print("| contender | Trainer construction ms | fit setup + teardown ms | share of a default job |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        if name == PLAIN:
            continue
        construct = [r["construct"] * 1e3 for r in runs]
        overhead = [r["setup_teardown"] * 1e3 for r in runs]
        share = (statistics.median(construct) + statistics.median(overhead)) / (JOB_STEPS * plain_step_ms)
        print(f"| {name} | {spread(construct, 0)} | {spread(overhead, 0)} | {share:.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="ae")
    parser.add_argument("--dataset", default="synthetic_brain")
    parser.add_argument("--profile", default="cpu", help="trainer profile (configs/trainers)")
    parser.add_argument("--batches", type=int, default=0,
                        help="batches held in memory = steps per epoch (default 0: one epoch of the train loader)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    parser.add_argument("--repeats", type=int, default=11, help="measurement rounds per schedule")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--mode", choices=("both", "paired", "alternating"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", action="store_true", help="also time Lightning with parts of the harness off")
    parser.add_argument("--fixed-cost", action="store_true",
                        help="also time Lightning's own cost per step with a one-parameter probe model")
    parser.add_argument("--cprofile", action="store_true", help="cProfile one extra harness fit, print the top")
    args = parser.parse_args()

    warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning")  # num_workers / log_every_n_steps hints
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "GPU available: False" etc. on every fit
    torch.set_num_threads(args.threads)
    method = load_component("methods", args.method)
    dataset = load_component("datasets", args.dataset)
    profile = load_trainer_profile(args.profile)
    job = training_job(method, dataset, profile, args.seed)
    batches, epoch_batches = load_batches(dataset, args.batches, args.seed)
    image = batches[0]["image"]
    links = {"image_size": int(image.shape[2]), "in_channels": int(image.shape[1])}
    steps = args.epochs * len(batches)

    plain_model = build_model(method, links, args.seed)
    harness_model = build_model(method, links, args.seed)
    reference = plain_model.state_dict()
    for name, value in harness_model.state_dict().items():
        if not torch.equal(value, reference[name]):
            raise RuntimeError(f"the two models differ at {name}")
    variants = [HARNESS, *(VARIANTS if args.variants else [])]

    tables: list[tuple[str, dict[str, list[dict[str, Any]]]]] = []
    with tempfile.TemporaryDirectory(prefix="normbench_overhead_") as tmp:
        workdir = Path(tmp)
        plain = PlainLoop(plain_model, batches)
        loops = [LightningLoop(harness_model if v is HARNESS else build_model(method, links, args.seed), batches,
                               job, v, workdir) for v in variants]
        for loop in loops:  # warm-up; the first Trainer sets the profile's process-wide torch flags
            loop.run(1)
        plain.run(1)
        deterministic = torch.are_deterministic_algorithms_enabled()
        loader_ms = loader_cost_ms(batches)
        if args.mode in ("alternating", "both"):
            tables.append(("alternating", alternating(plain, loops, args.epochs, args.repeats)))
        if args.mode in ("paired", "both"):
            tables.append(("paired", paired(plain, loops, args.epochs, args.repeats)))
        if torch.are_deterministic_algorithms_enabled() != deterministic or any(
                loop.deterministic != {deterministic} for loop in loops):
            raise RuntimeError("torch's deterministic flag differed between contenders")
        fixed: tuple[dict[str, list[float]], tuple[float, float], dict[str, float]] | None = None
        if args.fixed_cost:
            fixed = fixed_cost(batches, job, variants, workdir, 10, args.repeats)
        checkpoint = checkpoint_ms(loops[0], workdir)
        profile_text = ""
        if args.cprofile:
            profiler = cProfile.Profile()
            loops[0].run(args.epochs, profiler=profiler)
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(60)
            stream.write("\n--- by own time ---\n")
            pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(30)
            profile_text = stream.getvalue()

    threads = sorted({args.threads}.union(*(loop.threads for loop in loops)))
    sizes = sorted({int(b["image"].shape[0]) for b in batches})
    print(f"\n{date.today().isoformat()}, {platform.machine()}, python {platform.python_version()}, "
          f"torch {torch.__version__}, pytorch-lightning {pl.__version__}")
    print(f"method {args.method}, dataset {args.dataset}, trainer profile {args.profile} "
          f"(log_every_n_steps {profile.trainer.get('log_every_n_steps', 50)}, deterministic "
          f"{profile.trainer.get('deterministic', False)}); torch threads {threads}; deterministic algorithms "
          f"{deterministic} in both")
    print(f"harness Trainer: callbacks {', '.join(loops[0].callbacks)}; logger {loops[0].logger}")
    print(f"{len(batches)} batches in memory (sizes {sizes}, image {tuple(image.shape[1:])}; one epoch of the train "
          f"loader = {epoch_batches}), {args.epochs} epoch(s) = {steps} steps per measurement, {args.repeats} rounds "
          f"per schedule after a warm-up epoch; DataLoader over the list: {loader_ms:.2f} ms per batch (in both)")
    for mode, results in tables:
        table(mode, results, steps, args.epochs)
    plain_step = statistics.median(r["wall"] for r in tables[-1][1][PLAIN]) / steps * 1e3
    setup_table(tables[-1][1], plain_step)
    print(f"\ntrainer.save_checkpoint of the {args.method} model: {checkpoint[0]:.1f} ms per file "
          f"({checkpoint[1]:.2f} MB); ModelCheckpoint writes 2 files per epoch here (best-epochNNN.ckpt + last.ckpt), "
          f"{2 * checkpoint[0] / len(batches):.2f} ms per step over {len(batches)} steps")
    if fixed is not None:
        fixed_cost_table(fixed[0], 10, len(batches))
        print("\nprobe, harness trainer, two more fits: time inside each hook of the harness's callbacks\n")
        print("| callback hook | ms / step |\n|---|---:|")
        for name, ms in sorted(fixed[2].items(), key=lambda item: -item[1]):
            print(f"| {name} | {ms:.3f} |")
        print(f"\nprobe checkpoint: {fixed[1][0]:.1f} ms per file ({fixed[1][1]:.3f} MB)")
        probe_extra = statistics.median(v - p for v, p in zip(fixed[0][HARNESS.name], fixed[0][PLAIN], strict=True))
        extra = probe_extra + 2 * (checkpoint[0] - fixed[1][0]) / len(batches)
        print(f"predicted ratio for the {args.method} model: 1 + ({probe_extra:.2f} ms probe extra + 2 x "
              f"({checkpoint[0]:.1f} - {fixed[1][0]:.1f}) ms checkpoint / {len(batches)} steps) / {plain_step:.1f} ms "
              f"= {1 + extra / plain_step:.3f}")
    if profile_text:
        print("\ncProfile of one harness fit:\n")
        print(profile_text)


if __name__ == "__main__":
    main()
