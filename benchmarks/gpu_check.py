"""GPU check: the converged sweep's methods at 128 px in bf16 on one GPU, timed against a budget (``make gpu-check``).

    python benchmarks/gpu_check.py [--results-dir results] [--budget-min 8] [--tiny] [--precision P]
                                   [--job-cap-s S] [--overwrite] [--export DIR] [--threads N] [--progress]
                                   [--requirements] [key=value ...]

What it runs: the sweep ``configs/sweeps/gpu_check.yaml`` (the ``gpu`` trainer profile, ``bf16-mixed``, one device,
seed 0, the synthetic brain at 128 px and 2 mm as in ``paper.yaml``, but with the default CPU subject counts: 16
training, 4 validation, 4 healthy test, 4 per lesion kind and 6 unlabelled subjects, so that generation and
evaluation leave the budget to training), completed at run time from ``configs/sweeps/converged.yaml``, read when
the check starts because that sweep is still being tuned:

* its ``methods`` and every override of it that starts with ``methods.`` (the converged schedules and settings);
* its epoch schedule: ``max_epochs`` and ``early_stopping_patience`` of its trainer profile (after its own
  overrides) replace the ``gpu`` profile's, so epoch-based methods train as in the converged reference;
* ``trainer.max_time``: a cap on each job's training (below).

``key=value`` arguments override the result last, as on ``run_benchmark.py``'s command line; ``methods=[ae,vae]``
runs a subset (with only their own ``methods.*`` overrides). Jobs run through the harness's own runner
(``benchmark.runner.execute_job``, what ``run_sweep`` calls for every job of a local sweep): normal run folders,
checkpoints, resume, failure records and ``metrics.json``. Then ``leaderboard.csv`` and ``report.md`` of
``<results>/gpu_check/`` are written, and a timing table (one row per job, from each run's ``metrics.json`` ``run``
block: device, precision, wall / data / train / calibration / test seconds, epochs and steps, whether training hit
the cap, training and inference images/s, and the tumour set's pixel AUROC and AUPRC) is printed and saved as
``timings.md`` and ``timings.json`` beside them. The environment (torch, CUDA, device, bf16 support) is printed
first; then a missing requirement of ``setup.cfg`` (``--requirements`` checks only that) or a missing CUDA device
without ``--tiny`` stops the check at once, before any work. The harness runs from the checkout: ``normbench``
itself need not be installed, only its requirements.

Budget (``--budget-min``, 8 by default: the whole command, Python start-up, data generation and the report
included). The converged schedules were set for 2 CPU cores, so a GPU mostly finishes them early, but nothing
guarantees it; three guards keep the check inside the budget:

1. A per-job training cap, ``trainer.max_time`` (Lightning's ``Timer`` callback: checked after every training
   batch, it counts the wall time of ``fit`` from its first batch, validation included, and stops ``fit`` cleanly
   through ``trainer.should_stop``, as early stopping does; the tested checkpoint is then the best ``val/loss`` so
   far, or the final weights for methods without one). It stops every kind of schedule the same way: epoch-based
   methods (AE, VAEs), the staged GANs and ASC-Net (``lightning_modules/staged.py``: they count iterations in a
   buffer and set ``should_stop`` themselves when the schedule ends; their ``max_epochs: -1`` leaves only the
   schedule or the timer to end ``fit``) and the diffusion model (``max_training_steps``). A capped staged method
   stops inside its schedule, e.g. f-AnoGAN before or during its encoder stage: its scores then show what that much
   training gives, and the table marks the job ``capped`` (training time within 3 % of the cap). The cap is
   ``(budget - FIXED_RESERVE_S - jobs x JOB_RESERVE_S) / trained jobs`` (at least ``MIN_CAP_S``): the fixed
   reserve covers start-up, data generation and slice caches (42 subjects at 2 mm / 128 px: 32 s on one core of
   the 2-core CPU VM) and the leaderboard and report; the per-job reserve the Trainer's set-up, calibration, test,
   normative and generative metrics, which ``max_time`` does not count (at 128 px on that CPU: 3 s of evaluation
   for a one-score method, 15 s for a VAE's five scores with gradient maps). 8 minutes and the converged sweep's
   10 methods (7 that train, AnoDDPM for AutoDDPM among them) give 34 s per job; ``--job-cap-s`` sets it
   directly (0: no cap). The cap is a Trainer argument, so it is part of each job's key: another cap retrains.
2. A deadline: no job starts once the budget is spent; such jobs are listed as ``not started`` (and the check
   fails), so the leaderboard, report and timings are still written.
3. The verdict: exit status 1 when this invocation took longer than the budget, or any job failed or did not start
   (the reasons are printed last); 2 for a configuration error, a missing requirement or a missing GPU. Jobs
   finished by an earlier invocation are skipped (resume); their times are not in this invocation's total
   (``--overwrite`` retrains them all).

``--tiny`` is the CPU smoke check of all of this (tests): the same methods and overrides, then 32 px 4 mm brains
(3 training subjects), 2 epochs, a few iterations / steps and small networks for the staged and diffusion methods,
on the CPU, in ``<results>/gpu_check_tiny/`` (so it never replaces GPU runs): 27 to 95 s on the 2-core VM, data
included, as other work on its cores came and went. It uses one torch thread unless ``--threads`` says otherwise:
on those shared cores, 2 threads made the same fp32 run 8x slower (204 s against 27 s, minutes apart).
Its precision is ``bf16-mixed`` like the GPU check's, so that the tests run every method's bf16 path
(``--precision 32-true`` for fp32). Under bf16 ``ascnet`` fails at present (docs/performance.md, "GPU check").

``--export DIR`` copies ``timings.md``, ``leaderboard.csv`` and ``<sweep>.tar.gz`` (the sweep folder without
checkpoints, TensorBoard events and the runs' own figures, whose PNGs alone reach about 20 MB at 128 px; the report
and its figures stay) into DIR: three files, for machines whose results come back in a few small files.
"""

from __future__ import annotations

import argparse
import configparser
import json
import logging
import os
import platform
import re
import shutil
import sys
import tarfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout, like the other benchmarks/ scripts
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SWEEP = "gpu_check"
TINY_SWEEP = "gpu_check_tiny"
REFERENCE = "converged"
FIXED_RESERVE_S = 120  # Python start-up and imports, synthetic data generation and slice caches, report
JOB_RESERVE_S = 12     # per job: Trainer set-up, calibration, test, normative / generative metrics (not in max_time)
MIN_CAP_S = 10
BACKEND_ONLY = {"submitit"}  # imported by the SLURM backend only
NO_CUDA = ("no CUDA device found (torch {torch} sees none): the GPU check needs one. Pass --tiny for the CPU smoke "
           "check (32 px, under two minutes on 2 CPU cores): python benchmarks/gpu_check.py --tiny")

# --tiny: after the reference's overrides, so that they win
TINY_OVERRIDES = [
    "trainer.accelerator=cpu",
    "trainer.benchmark=false",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "profile.image_grid_every_n_epochs=1",
    "datasets.synthetic_brain.n_train=3",
    "datasets.synthetic_brain.n_val=1",
    "datasets.synthetic_brain.n_test_healthy=1",
    "datasets.synthetic_brain.n_test_per_lesion=1",
    "datasets.synthetic_brain.n_unlabelled=2",
    "datasets.synthetic_brain.resolution_mm=4.0",
    "datasets.synthetic_brain.image_size=32",
    "datasets.synthetic_brain.batch_size=16",
    "datasets.synthetic_brain.min_lesion_pixels=3",
    "evaluation.generative_samples=4",
]
TINY_METHOD_OVERRIDES = {  # per method config: small networks, a few iterations, cheap samplers
    "vae": ["channels=[4,8,16]", "z_dim=8"],
    "fanogan": ["dim=4", "z_dim=16", "gan_iterations=4", "encoder_iterations=2"],
    "dcgan": ["features=4", "z_dim=16", "iterations=4", "mapping_steps=2"],
    "ascnet": ["width=2", "stage1_cycles=1", "stage2_cycles=1", "d_iterations=1", "g_iterations=1"],
    "anoddpm": ["channels=[8,8,16]", "attention_levels=[false,false,true]", "num_head_channels=16",
                "norm_num_groups=8", "max_training_steps=3", "sampler=ddim", "inference_steps=10"],
    "anoddpm_simplex": ["channels=[8,8,16]", "attention_levels=[false,false,true]", "num_head_channels=16",
                        "norm_num_groups=8", "max_training_steps=3", "sampler=ddim", "inference_steps=10"],
    "autoddpm": ["t_recon=200", "resamples=2"],
}


# ---- environment ------------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What the check runs on (printed first, and saved in ``timings.json``)."""
    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_build": torch.version.cuda, "cuda_available": cuda}
    try:
        env["pytorch_lightning"] = metadata.version("pytorch-lightning")
    except metadata.PackageNotFoundError:
        env["pytorch_lightning"] = "not installed"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported())
    else:
        env.update(device=f"CPU ({platform.processor() or platform.machine()})", bf16_supported="CPU autocast only")
    env.update(cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    return env


def print_environment(env: dict[str, Any]) -> None:
    print("[gpu-check] environment: " + ", ".join(f"{key}={value}" for key, value in env.items()), flush=True)


def missing_requirements() -> list[str]:
    """The requirements of ``setup.cfg`` (``install_requires``) that are not installed, except those that only
    other backends import (``BACKEND_ONLY``). The harness itself runs from the checkout (no install needed)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    missing = []
    for requirement in config["options"]["install_requires"].split():
        name = re.split(r"[<>=!~;\[]", requirement, maxsplit=1)[0].strip()
        if name and name not in BACKEND_ONLY:
            try:
                metadata.version(name)
            except metadata.PackageNotFoundError:
                missing.append(requirement)
    return missing


# ---- the sweep --------------------------------------------------------------------------------------------------
class Reference(NamedTuple):
    """What the check takes from the converged sweep."""

    source: str
    methods: list[Any]
    method_overrides: list[str]
    max_epochs: Any
    early_stopping_patience: Any


def reference(name: str = REFERENCE) -> Reference:
    """The methods, ``methods.*`` overrides and epoch schedule of sweep ``name`` (validated by loading it)."""
    from benchmark.config import ConfigError, find_config, load_yaml
    from benchmark.sweep import load_sweep

    path = find_config("sweeps", name)
    data = load_yaml(path)
    if not isinstance(data.get("methods"), list) or not data["methods"]:
        raise ConfigError(f"{path}: methods must be a non-empty list")
    profile = load_sweep(name).jobs[0].profile  # its overrides applied (and every job checked)
    overrides = [str(o).strip() for o in data.get("overrides") or [] if str(o).strip().startswith("methods.")]
    return Reference(str(path), list(data["methods"]), overrides, profile.trainer.get("max_epochs"),
                     profile.early_stopping_patience)


def config_names(methods: list[Any]) -> set[str]:
    """Config names of sweep ``methods`` entries (a name, a YAML path, or a grid entry ``{name: {...}}``)."""
    names = set()
    for entry in methods:
        name = next(iter(entry)) if isinstance(entry, dict) and entry else entry
        names.add(Path(str(name)).stem)
    return names


def max_time(seconds: int) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS``."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def training_cap_s(budget_s: float, n_jobs: int, n_trained: int) -> int:
    """Seconds of training per trained job that leave the reserves of the module docstring inside ``budget_s``."""
    spare = budget_s - FIXED_RESERVE_S - n_jobs * JOB_RESERVE_S
    return max(MIN_CAP_S, int(spare // max(n_trained, 1)))


def trained_jobs(jobs: list[Any]) -> list[Any]:
    """The jobs that train, upstreams included (AutoDDPM's AnoDDPM), each once."""
    from lightning_modules.base import AnomalyModule

    seen: dict[int, Any] = {}
    for job in jobs:
        while job is not None:
            seen[id(job)] = job
            job = job.upstream
    found = []
    for job in seen.values():
        target = job.method.target()
        if isinstance(target, type) and issubclass(target, AnomalyModule) and target.requires_training:
            found.append(job)
    return found


def _for_methods(overrides: list[str], names: set[str]) -> list[str]:
    """The ``methods.<name>.<arg>=value`` overrides whose method is one of the config names ``names``."""
    return [o for o in overrides if any(o.removeprefix("methods.").startswith((f"{n}.", f"{n}@")) for n in names)]


def build_check_sweep(tiny: bool = False, budget_min: float = 8.0, precision: str | None = None,
                      job_cap_s: int | None = None, extra: list[str] | tuple[str, ...] = ()) -> tuple[Any, int | None]:
    """The check's sweep (module docstring) and the per-job training cap in seconds (``None``: no cap). ``extra``:
    ``key=value`` overrides from the command line, applied last (``methods=[ae,fanogan]`` runs a subset)."""
    from benchmark.config import ConfigError, find_config, load_yaml
    from benchmark.sweep import SWEEP_KEYS, build_sweep, parse_override

    ref = reference()
    path = find_config("sweeps", SWEEP)
    data = load_yaml(path)
    data["methods"] = ref.methods
    top = [o for o in extra if "." not in o.partition("=")[0]]
    for text in top:  # sweep keys first, so that a subset of methods only gets its own method overrides
        key, value = parse_override(text)
        if key[0] not in SWEEP_KEYS or key[0] == "overrides":
            raise ConfigError(f"override {text!r}: unknown sweep key {key[0]!r}; valid: {sorted(SWEEP_KEYS)}")
        data[key[0]] = value
    names = config_names(data["methods"]) if isinstance(data["methods"], list) else set()
    overrides = [*(data.pop("overrides", None) or []), *_for_methods(ref.method_overrides, names)]
    if ref.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={ref.max_epochs}")
    patience = ref.early_stopping_patience
    overrides.append(f"profile.early_stopping_patience={'null' if patience is None else patience}")
    if tiny:
        overrides += TINY_OVERRIDES
        overrides += [f"methods.{name}.{setting}" for name in sorted(names)
                      for setting in TINY_METHOD_OVERRIDES.get(name, [])]
    if precision:
        overrides.append(f"trainer.precision={precision}")
    overrides += [o for o in extra if o not in top]
    name = TINY_SWEEP if tiny else SWEEP
    source = f"{path} + methods and method overrides of {ref.source}"
    sweep = build_sweep(name, data, overrides, source)
    cap = job_cap_s if job_cap_s is not None else training_cap_s(
        budget_min * 60, len(sweep.jobs), len(trained_jobs(sweep.jobs)))
    if not cap:
        return sweep, None
    return build_sweep(name, data, [*overrides, f"trainer.max_time='{max_time(cap)}'"], source), cap


# ---- running ----------------------------------------------------------------------------------------------------
def elapsed() -> float:
    return time.perf_counter() - STARTED


def run_jobs(sweep: Any, results: Path, budget_s: float, progress: bool) -> list[tuple[Any, str, str | None]]:
    """Every job through the runner, in order; none starts after the budget is spent. (job, status, error)."""
    from benchmark.job import multi_device
    from benchmark.runner import execute_job

    attempted: dict[Path, Any] = {}
    done = []
    for number, job in enumerate(sweep.jobs, 1):
        if elapsed() >= budget_s:
            print(f"[gpu-check] {job.method.name}: not started, the budget of {budget_s:.0f} s is spent")
            done.append((job, "not started", f"budget of {budget_s:.0f} s spent before it started"))
            continue
        print(f"[gpu-check] job {number}/{len(sweep.jobs)}: {job.method.name} (at {elapsed():.0f} s)", flush=True)
        outcome = execute_job(job, job.run_dir(results, sweep.name), progress, in_subprocess=multi_device(job),
                              attempted=attempted)
        print(f"[gpu-check] {job.method.name}: {outcome.status} in {outcome.seconds:.1f} s"
              + (f": {outcome.error}" if outcome.error else ""), flush=True)
        done.append((job, outcome.status, outcome.error))
    return done


def write_outputs(sweep: Any, results: Path) -> list[str]:
    """Leaderboard and report of the sweep folder; problems are returned, not raised (the timings still follow)."""
    from benchmark.leaderboard import write_leaderboard
    from benchmark.report import write_report

    problems = []
    sweep_dir = results / sweep.name
    try:
        write_leaderboard(sweep_dir, primary=sweep.primary_metric)
        write_report(sweep_dir, primary=sweep.primary_metric)
    except Exception as error:  # the run folders hold the results; say what went wrong
        problems.append(f"leaderboard / report not written: {type(error).__name__}: {error}")
    return problems


# ---- timings ----------------------------------------------------------------------------------------------------
COLUMNS = ("method", "status", "device", "precision", "wall s", "data s", "train s", "calib s", "test s", "epochs",
           "steps", "capped", "train img/s", "inference img/s", "tumour pixel AUROC", "tumour pixel AUPRC")


def _number(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def timing_rows(done: list[tuple[Any, str, str | None]], results: Path, sweep_name: str,
                cap_s: int | None) -> list[dict[str, Any]]:
    """One row per job from its ``metrics.json`` (``run`` block and the tumour set's pixel metrics)."""
    from benchmark.io import read_json
    from lightning_modules.base import AnomalyModule

    rows = []
    for job, status, error in done:
        metrics = read_json(job.run_dir(results, sweep_name) / "metrics.json") or {}
        run = metrics.get("run") or {}
        tumour = ((metrics.get("test_sets") or {}).get("tumor") or {}).get("pixel") or {}
        target = job.method.target()
        trains = isinstance(target, type) and issubclass(target, AnomalyModule) and target.requires_training
        train_s = run.get("train_time_s")
        capped = "-" if not trains or not isinstance(train_s, int | float) else \
            "no" if cap_s is None or train_s < 0.97 * cap_s else "yes"
        rows.append({
            "method": job.method.name,
            "status": "skipped (finished earlier)" if status == "skipped" else status,
            "error": error or (metrics.get("error") or {}).get("message"),
            "device": run.get("device"), "precision": run.get("precision"),
            "wall_time_s": run.get("wall_time_s"), "data_time_s": run.get("data_time_s"), "train_time_s": train_s,
            "calibration_time_s": run.get("calibration_time_s"), "test_time_s": run.get("test_time_s"),
            "epochs": run.get("epochs"), "global_steps": run.get("global_steps"), "capped": capped,
            "train_images_per_s": run.get("train_images_per_s"),
            "inference_images_per_s": run.get("inference_images_per_s"),
            "tumor_pixel_auroc": tumour.get("auroc"), "tumor_pixel_auprc": tumour.get("auprc"),
        })
    return rows


def timing_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i < 4 or c == "capped" else "---:"
                                                            for i, c in enumerate(COLUMNS)) + "|"]
    for row in rows:
        cells = [row["method"], row["status"], row["device"] or "-", row["precision"] or "-",
                 *(_number(row[key]) for key in ("wall_time_s", "data_time_s", "train_time_s", "calibration_time_s",
                                                 "test_time_s")),
                 _number(row["epochs"], 0), _number(row["global_steps"], 0), row["capped"],
                 _number(row["train_images_per_s"]), _number(row["inference_images_per_s"]),
                 _number(row["tumor_pixel_auroc"], 4), _number(row["tumor_pixel_auprc"], 4)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def export(sweep_dir: Path, target: Path) -> Path:
    """``timings.md``, ``leaderboard.csv`` and the sweep folder (module docstring) as a tar.gz, into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("timings.md", "leaderboard.csv"):
        if (sweep_dir / name).is_file():
            shutil.copy2(sweep_dir / name, target / name)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:  # the runs' own figures: the report has the grids
        parts = Path(info.name).parts
        dropped = {"checkpoints", "tensorboard"} | ({"figures"} if "runs" in parts else set())
        return None if dropped & set(parts) or any(p.startswith(".") for p in parts) else info

    archive = target / f"{sweep_dir.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sweep_dir, arcname=sweep_dir.name, filter=keep)
    return archive


# ---- command line -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results", help="results root (the check writes RESULTS/gpu_check)")
    parser.add_argument("--budget-min", type=float, default=8.0, help="time budget of the whole command (minutes)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke check at 32 px (RESULTS/gpu_check_tiny)")
    parser.add_argument("--precision", default=None,
                        help="Trainer precision (default: bf16-mixed, also with --tiny), e.g. 32-true")
    parser.add_argument("--job-cap-s", type=int, default=None,
                        help="training cap per job in seconds (default: from the budget; 0: no cap)")
    parser.add_argument("--overwrite", action="store_true", help="delete the check's run folders first (full timing)")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="also copy timings.md, leaderboard.csv and a tar.gz of the results (no checkpoints) here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; 1 with --tiny, see the module docstring)")
    parser.add_argument("--progress", action="store_true", help="progress bars and Lightning's info messages")
    parser.add_argument("--requirements", action="store_true",
                        help="only check that the requirements of setup.cfg are installed (exit 0 when they are)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="sweep overrides applied last, e.g. methods=[ae,fanogan] trainer.max_epochs=5")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    env = environment()
    print_environment(env)
    missing = missing_requirements()
    if missing:
        print(f"error: missing Python packages: {', '.join(missing)}. Run `make install` (it needs the package "
              "index), or on a machine without network install their wheels (pip install --no-index WHEELS); the "
              "check runs from the checkout and needs no install of normbench itself", file=sys.stderr)
        return 2
    if args.requirements:
        print("[gpu-check] every requirement is installed")
        return 0
    if not args.tiny and not env["cuda_available"]:
        print(f"error: {NO_CUDA.format(torch=torch.__version__)}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    import pytorch_lightning  # noqa: F401  (its import sets its loggers to INFO: quieten them after it)

    if not args.progress:
        for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)

    from benchmark.config import ConfigError

    budget_s = args.budget_min * 60
    try:
        sweep, cap_s = build_check_sweep(args.tiny, args.budget_min, args.precision, args.job_cap_s,
                                          args.overrides)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = Path(args.results_dir)
    sweep_dir = results / sweep.name
    profile = sweep.jobs[0].profile.trainer
    print(f"[gpu-check] {len(sweep.jobs)} jobs ({', '.join(job.method.name for job in sweep.jobs)}) on "
          f"{sweep.jobs[0].dataset.name} at {sweep.jobs[0].dataset.resolved()['init_args']['image_size']} px, "
          f"{profile.get('accelerator')} / {profile.get('precision')}, max_epochs {profile.get('max_epochs')}, "
          f"training cap {'none' if cap_s is None else f'{cap_s} s'} per job, budget {budget_s:.0f} s; "
          f"results in {sweep_dir}", flush=True)
    if args.overwrite:
        for job in sweep.jobs:
            for folder in (job.run_dir(results, sweep.name), *(
                    [job.upstream.run_dir(results, sweep.name)] if job.upstream is not None else [])):
                shutil.rmtree(folder, ignore_errors=True)

    done = run_jobs(sweep, results, budget_s, args.progress)
    problems = write_outputs(sweep, results)
    rows = timing_rows(done, results, sweep.name, cap_s)
    total = elapsed()
    table = timing_table(rows)
    skipped = sum(row["status"].startswith("skipped") for row in rows)
    summary = (f"total {total:.1f} s for this invocation (budget {budget_s:.0f} s), training cap "
               f"{'none' if cap_s is None else f'{cap_s} s'} per job"
               + (f"; {skipped} job(s) finished in an earlier invocation are not in the total (--overwrite retimes "
                  "them)" if skipped else ""))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "timings.md").write_text(
        f"# GPU check: {sweep.name}\n\nEnvironment: " + ", ".join(f"{k}={v}" for k, v in env.items())
        + f"\n\n{table}\n\n{summary}\n")
    (sweep_dir / "timings.json").write_text(json.dumps(
        {"environment": env, "budget_s": budget_s, "total_s": total, "job_cap_s": cap_s, "jobs": rows},
        indent=2, default=str))
    print(table)
    print(f"[gpu-check] {summary}")
    print(f"[gpu-check] leaderboard: {sweep_dir / 'leaderboard.csv'}  report: {sweep_dir / 'report.md'}  "
          f"timings: {sweep_dir / 'timings.md'}")
    if args.export:
        print(f"[gpu-check] exported {export(sweep_dir, Path(args.export))}")

    for row in rows:
        if row["status"] in ("failed", "not started"):
            problems.append(f"{row['method']}: {row['status']}: {row['error']}")
    if total > budget_s:
        problems.append(f"the check took {total:.1f} s, over its budget of {budget_s:.0f} s")
    for problem in problems:
        print(f"[gpu-check] FAILED {problem}", file=sys.stderr)
    if not problems:
        print(f"[gpu-check] PASSED: {len(rows)} jobs within {budget_s:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
