"""The report's "Generative quality" section, per dataset, for methods that generate images (GANs).

Built from the run folders alone: ``metrics.json``'s ``generative`` (best-SSIM sample quality, see
``benchmark/generative.py``), ``figures/samples.png``, ``figures/samples_training.gif`` and the generator and
discriminator (critic) losses in ``tensorboard/`` (read with TensorBoard's ``EventAccumulator``: every event file
of the folder, so a resumed run's several files; on a step logged twice the later file wins). A method whose logs
lack those tags is left out of the loss figure; the section is absent when no method of the dataset has a
generative result. Score variants of one run share its result: the section names the method without variant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmark.markdown import markdown_table
from benchmark.naming import SAMPLES_GIF, SAMPLES_PNG
from benchmark.report_common import (
    FIGURES,
    NA,
    format_mean_std,
    image_link,
    new_figure,
    relative_link,
    save_figure,
    slug,
    unique,
)
from benchmark.report_sweep import Run, Sweep

SSIM_COLUMNS = (("SSIM max", "ssim_max"), ("SSIM mean", "ssim_mean"), ("SSIM min", "ssim_min"))
LOSS_TAGS = {  # label -> TensorBoard tags, first found wins (``_step``: logged with on_step and on_epoch)
    "generator": ("train/generator_loss", "train/generator_loss_step"),
    "discriminator / critic": ("train/discriminator_loss", "train/discriminator_loss_step"),
}
LOSS_COLORS = {"generator": "tab:blue", "discriminator / critic": "tab:red"}
PANELS_PER_ROW = 3

GENERATIVE_GUIDE = """\
**Generative quality** (methods that generate images, such as GANs): each of N generated samples gets its best
SSIM against every held-out healthy image (the `healthy` test set, else the validation split; images in [0, 1],
11 x 11 Gaussian window, sigma 1.5); the table gives the max, mean and min over the samples, each as mean ± std
over seeds. 1 means a sample equals some real image. It rewards realism, not diversity: a generator collapsed onto
one realistic image still scores high. The historical OASIS target SSIM > 0.6 is a reference point, not a criterion.
"""

Curves = dict[str, tuple[np.ndarray, np.ndarray]]  # loss label -> (steps, values)


# ---- loading --------------------------------------------------------------------------------------------------------
def generative_result(run: Run) -> dict[str, Any] | None:
    """A completed run's ``generative`` entry (``None`` without one)."""
    result = (run.metrics or {}).get("generative") if run.status == "completed" else None
    return result if isinstance(result, dict) else None


def generative_runs(sweep: Sweep, dataset: str) -> dict[str, list[Run]]:
    """Per method (the run folder's name: score variants merged), its completed runs with a generative result, one
    per seed, lowest seed first."""
    found: dict[str, list[Run]] = {}
    for run in sweep.completed(dataset):
        runs = found.setdefault(run.path.parent.name, [])
        if generative_result(run) is not None and all(other.seed != run.seed for other in runs):
            runs.append(run)
    return {method: sorted(runs, key=lambda run: run.seed) for method, runs in found.items() if runs}


def has_generative(sweep: Sweep) -> bool:
    return any(generative_result(run) is not None for run in sweep.runs)


def loss_curves(tensorboard_dir: Path) -> Curves:
    """Generator and discriminator losses of a run's TensorBoard folder, sorted by step (the labels found)."""
    if not tensorboard_dir.is_dir():
        return {}
    try:
        events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0}).Reload()
        tags = set(events.Tags().get("scalars", []))
        curves: Curves = {}
        for label, candidates in LOSS_TAGS.items():
            tag = next((tag for tag in candidates if tag in tags), None)
            if tag is None:
                continue
            by_step = {event.step: event.value for event in events.Scalars(tag)}  # a repeated step: the later one
            steps = np.array(sorted(by_step), dtype=float)
            values = np.array([by_step[step] for step in sorted(by_step)], dtype=float)
            keep = np.isfinite(values)
            if keep.any():
                curves[label] = (steps[keep], values[keep])
        return curves
    except Exception:  # an unreadable log costs the run its plot, never the report
        return {}


# ---- table, images, figure ------------------------------------------------------------------------------------------
def _stats(runs: list[Run], key: str) -> tuple[float, float]:
    """Mean and sample std over seeds of one summary value (the seeds that report a finite one)."""
    values = [value for run in runs if isinstance(value := (generative_result(run) or {}).get(key), int | float)
              and not isinstance(value, bool) and math.isfinite(value)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _distinct(runs: list[Run], key: str) -> str:
    return " / ".join(unique(str(value) for run in runs
                              if (value := (generative_result(run) or {}).get(key)) is not None)) or NA


def generative_table(found: dict[str, list[Run]]) -> str:
    """Markdown table: per method its seeds, samples x references, reference set and SSIM max / mean / min."""
    rows = [[method, ", ".join(str(run.seed) for run in runs),
             f"{_distinct(runs, 'n_samples')} x {_distinct(runs, 'n_reference')}", _distinct(runs, "reference"),
             *(format_mean_std(*_stats(runs, key)) for _, key in SSIM_COLUMNS)]
            for method, runs in found.items()]
    header = ["method", "seeds", "samples x references", "references", *(title for title, _ in SSIM_COLUMNS)]
    return markdown_table(header, rows, "llll" + "r" * len(SSIM_COLUMNS))


def _samples_rows(found: dict[str, list[Run]], root: Path) -> list[list[str]]:
    """Per method, its lowest seed with a ``samples.png``: the image and a link to the training GIF."""
    rows = []
    for method, runs in found.items():
        run = next((run for run in runs if (run.path / FIGURES / SAMPLES_PNG).is_file()), None)
        if run is None:
            continue
        gif = run.path / FIGURES / SAMPLES_GIF
        training = f"[{SAMPLES_GIF}]({relative_link(gif, root)})" if gif.is_file() else NA
        rows.append([method, str(run.seed), image_link(f"{method} samples", run.path / FIGURES / SAMPLES_PNG, root),
                     training])
    return rows


def chosen_losses(found: dict[str, list[Run]]) -> dict[str, tuple[Run, Curves]]:
    """Per method, its lowest seed whose TensorBoard logs hold generator or discriminator losses."""
    chosen = {}
    for method, runs in found.items():
        for run in runs:
            if curves := loss_curves(run.path / "tensorboard"):
                chosen[method] = (run, curves)
                break
    return chosen


def plot_losses(chosen: dict[str, tuple[Run, Curves]], title: str, path: Path) -> bool:
    """One panel per method: generator and discriminator (critic) loss over steps; ``False`` (no file) if none."""
    if not chosen:
        return False
    columns = min(PANELS_PER_ROW, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    fig, axes = new_figure(rows, columns, (3.6, 2.4), (0.7, 0.2, 0.55, 0.6), (0.7, 0.7))
    for index, ax in enumerate(axes.ravel()):
        if index >= len(chosen):
            ax.set_axis_off()
            continue
        method, (run, curves) = list(chosen.items())[index]
        for label, (steps, values) in curves.items():
            ax.plot(steps, values, color=LOSS_COLORS[label], linewidth=0.9, label=label)
        ax.set(xlabel="step", ylabel="loss", title=f"{method} (seed {run.seed})")
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return True


# ---- the section ----------------------------------------------------------------------------------------------------
def generative_section(sweep: Sweep, dataset: str) -> list[str]:
    """Markdown lines of the dataset's "Generative quality" section (none without a generative result)."""
    found = generative_runs(sweep, dataset)
    if not found:
        return []
    lines = ["### Generative quality", "",
             "Each sample's best SSIM against every held-out healthy image (images in [0, 1], 11 x 11 Gaussian "
             "window, sigma 1.5); max / mean / min over the samples, mean ± std over seeds. Samples are drawn with "
             "the weights under test; an OASIS SSIM > 0.6 is a historical reference point, not a criterion.", "",
             generative_table(found), ""]
    rows = _samples_rows(found, sweep.root)
    if rows:
        lines += ["Samples of the lowest seed (a fixed-noise grid over training in the GIF):", "",
                  markdown_table(["method", "seed", "samples", "training"], rows), ""]
    chosen = chosen_losses(found)
    path = sweep.root / FIGURES / f"gan_losses_{slug(dataset)}.png"
    if plot_losses(chosen, f"{dataset}: generator and discriminator losses", path):
        lines += [image_link(f"{dataset} generator and discriminator losses", path, sweep.root), ""]
    absent = [f"`{method}`" for method in found if method not in chosen]
    if absent:
        lines += [f"No generator / discriminator losses in the TensorBoard logs of {', '.join(absent)}.", ""]
    return lines
