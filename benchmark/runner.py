"""The sweep runner: every job of a sweep, unattended, resumable, one failure never stopping the rest.

For each job (method x dataset x seed) the runner

* skips it when its run folder holds a completed ``metrics.json`` with the same config key;
* moves a run folder made by another configuration aside (``seed_<n>.replaced-<old key>``) and starts afresh;
* otherwise runs it, resuming from ``checkpoints/last.ckpt`` when an earlier attempt was interrupted;
* records a failure (exception, NaN loss, out of memory) as ``metrics.json`` with ``status: failed`` and the error,
  and goes on with the next job (a failed job is retried on the next run of the sweep);
* rewrites ``leaderboard.csv`` after every job (atomically, under a file lock) and ``report.md`` at the end.

A job that evaluates another job's weights (``Job.upstream``, see ``benchmark/sweep.py``) first makes sure its
upstream is finished: a finished upstream is skipped (never retrained), an unfinished one runs first in its own
folder ``runs/<dataset>/<upstream method>/seed_<n>`` (whether or not it is one of the sweep's jobs). When the
upstream fails, the dependent job is recorded as failed (naming the upstream and why) and the sweep goes on. Within
one run of the sweep a job is attempted at most once, even when it is also another job's upstream.

Backends: ``local`` runs jobs one after another in this process, except jobs that span several devices, which
run in a child process (Lightning's DDP launcher re-executes the command line, so they must own it). ``submitit``
submits one job per run (a SLURM job array, or local subprocesses with ``cluster: local``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmark.io import read_json, write_json
from benchmark.job import (
    METRICS_SCHEMA,
    Job,
    describe_job,
    job_from_spec,
    job_key,
    job_spec,
    run_job,
    software_versions,
    upstream_run_dir,
)
from benchmark.sweep import Sweep

JOB_FILE = "job.json"


@dataclass
class JobOutcome:
    """What happened to one job in this run of the sweep."""

    job: Job
    status: str  # completed | skipped | failed
    seconds: float = 0.0
    error: str | None = None


class UpstreamError(RuntimeError):
    """The job whose weights a job evaluates (its upstream) failed."""


def upstream_failure(job: Job, run_dir: Path, error: str | None) -> UpstreamError:
    """The error recorded for ``job`` when its upstream (in ``upstream_run_dir(run_dir, job)``) failed."""
    if job.upstream is None:
        raise ValueError(f"{describe_job(job)} has no upstream job")
    return UpstreamError(f"the upstream job {describe_job(job.upstream)} ({upstream_run_dir(run_dir, job)}), whose "
                         f"weights {job.method.name} evaluates, failed: {error or 'see its metrics.json'}")


def is_rank_zero() -> bool:
    """False in the extra processes of a multi-device job (they must not write sweep-level files)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0 and \
        int(os.environ.get("NODE_RANK", "0")) == 0


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


def move_aside(run_dir: Path, reason: str) -> Path:
    """Rename a run folder to a hidden sibling (``.seed_0.<reason>``), which leaderboards and reruns ignore."""
    target = run_dir.with_name(f".{run_dir.name}.{reason}")
    attempt = 1
    while target.exists():
        attempt += 1
        target = run_dir.with_name(f".{run_dir.name}.{reason}-{attempt}")
    run_dir.rename(target)
    return target


def prepare_run_dir(job: Job, run_dir: Path) -> str | None:
    """Return ``"finished"`` when the job is done, else make its folder ready.

    A folder written by another configuration, or holding a recorded failure (whose checkpoints may carry the
    failure, e.g. NaN weights), is moved aside and the job starts afresh; an interrupted attempt (no
    ``metrics.json``) is kept, and training resumes from its ``last.ckpt``.
    """
    key = job_key(job)
    metrics = read_json(run_dir / "metrics.json")
    if metrics and metrics.get("status") == "completed" and metrics.get("key") == key:
        return "finished"
    recorded = read_json(run_dir / JOB_FILE) or {}
    replaced = recorded.get("key", key) != key or (metrics or {}).get("status") == "completed"
    if run_dir.exists() and replaced and is_rank_zero():
        moved = move_aside(run_dir, f"replaced-{recorded.get('key', (metrics or {}).get('key', 'unknown'))}")
        print(f"[normbench] configuration changed: moved the old run of {run_dir} to {moved.name}")
    elif metrics is not None and is_rank_zero():
        moved = move_aside(run_dir, "failed")
        print(f"[normbench] retrying a failed job from scratch; the failed attempt is in {moved}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_rank_zero():
        write_json(run_dir / JOB_FILE, job_spec(job))
    return None


def record_failure(job: Job, run_dir: Path, error: BaseException, seconds: float) -> dict[str, Any]:
    """Write the failure as the job's ``metrics.json`` (status ``failed``) so the leaderboard lists it."""
    metrics = {
        "schema": METRICS_SCHEMA,
        "status": "failed",
        "method": job.method.name,
        "dataset": job.dataset.name,
        "seed": job.seed,
        "key": job_key(job),
        "error": {"type": type(error).__name__, "message": str(error)[:2000],
                  "traceback": "".join(traceback.format_exception(error))[-8000:]},
        "run": {"wall_time_s": seconds},
        "versions": software_versions(),
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def execute_job(job: Job, run_dir: Path, progress: bool = True, in_subprocess: bool = False,
                attempted: dict[Path, JobOutcome] | None = None) -> JobOutcome:
    """Run one job with failure isolation. ``in_subprocess``: run it through ``run_benchmark.py run --job``.

    A job with an upstream first executes the upstream (skipped when finished). ``attempted`` (run folder ->
    outcome, shared by the jobs of one sweep run) returns the outcome of a job already attempted, e.g. as an
    upstream, instead of running it again."""
    run_dir = Path(run_dir)
    if attempted is not None and run_dir.absolute() in attempted:
        return attempted[run_dir.absolute()]
    outcome = _execute_job(job, run_dir, progress, in_subprocess, attempted)
    if attempted is not None:
        attempted[run_dir.absolute()] = outcome
    return outcome


def _execute_job(job: Job, run_dir: Path, progress: bool, in_subprocess: bool,
                 attempted: dict[Path, JobOutcome] | None) -> JobOutcome:
    if prepare_run_dir(job, run_dir) == "finished":
        print(f"[normbench] {run_dir} is finished with this configuration; skipping it (--overwrite to rerun)")
        return JobOutcome(job, "skipped")
    started = time.perf_counter()
    if job.upstream is not None and is_rank_zero():  # the other ranks of a DDP job find it finished
        upstream_dir = upstream_run_dir(run_dir, job)
        print(f"[normbench] {describe_job(job)} evaluates the weights of {describe_job(job.upstream)} "
              f"({upstream_dir})")
        upstream = execute_job(job.upstream, upstream_dir, progress, in_subprocess=multi_device(job.upstream),
                               attempted=attempted)
        if upstream.status == "failed":
            error = upstream_failure(job, run_dir, upstream.error)
            seconds = time.perf_counter() - started
            record_failure(job, run_dir, error, seconds)
            return JobOutcome(job, "failed", seconds, f"{type(error).__name__}: {error}")
        started = time.perf_counter()  # the dependent's own time
    try:
        if in_subprocess:
            _run_in_subprocess(run_dir, progress)
        else:
            run_job(job, run_dir, progress=progress)
    except Exception as error:
        seconds = time.perf_counter() - started
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an out-of-memory error the next job needs the memory back
        child_record = in_subprocess and (read_json(run_dir / "metrics.json") or {}).get("status") == "failed"
        if is_rank_zero() and not child_record:  # a job process records its own failure, with its traceback
            record_failure(job, run_dir, error, seconds)
        return JobOutcome(job, "failed", seconds, f"{type(error).__name__}: {error}")
    return JobOutcome(job, "completed", time.perf_counter() - started)


def _run_in_subprocess(run_dir: Path, progress: bool) -> None:
    command = [sys.executable, str(Path(__file__).resolve().parent.parent / "run_benchmark.py"), "run",
               "--job", str(run_dir / JOB_FILE)] + ([] if progress else ["--quiet"])
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        metrics = read_json(run_dir / "metrics.json") or {}
        detail = metrics.get("error", {}).get("message", "see the output above")
        raise RuntimeError(f"job process exited with code {done.returncode}: {detail}")
    if (read_json(run_dir / "metrics.json") or {}).get("status") != "completed":
        raise RuntimeError("job process finished without a completed metrics.json")


def run_from_job_file(path: Path, progress: bool = True) -> dict[str, Any]:
    """Run the job described by a ``job.json`` in its own folder (used for multi-device jobs and submitit)."""
    path = Path(path)
    spec = read_json(path)
    if spec is None:
        raise FileNotFoundError(f"{path}: missing or unreadable job file")
    job = job_from_spec(spec, str(path))
    outcome = execute_job(job, path.parent, progress=progress)
    if outcome.status == "failed":
        raise RuntimeError(f"{job.method.name} / {job.dataset.name} / seed {job.seed} failed: {outcome.error}")
    return read_json(path.parent / "metrics.json") or {}


@dataclass
class SweepProgress:
    """A Rich status table of the sweep between jobs: done, failed, skipped, remaining and the ETA."""

    total: int
    console: Console = field(default_factory=lambda: Console(stderr=True))
    outcomes: list[JobOutcome] = field(default_factory=list)

    def update(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)

    def show(self, next_job: Job | None = None) -> None:
        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("completed", "skipped", "failed")}
        remaining = self.total - len(self.outcomes)
        ran = [o.seconds for o in self.outcomes if o.status != "skipped"]
        eta = f"{remaining * sum(ran) / len(ran) / 60:.1f} min" if ran and remaining else "-"
        table = Table(title="NormBench sweep", show_edge=False)
        for column in ("done", "failed", "skipped", "remaining", "ETA", "next"):
            table.add_column(column)
        upcoming = f"{next_job.method.name} / {next_job.dataset.name} / seed {next_job.seed}" if next_job else "-"
        table.add_row(str(counts["completed"]), str(counts["failed"]), str(counts["skipped"]), str(remaining), eta,
                      upcoming)
        self.console.print(table)


def run_sweep(sweep: Sweep, results_dir: Path, progress: bool = True,
              after_job: Callable[[Path], None] | None = None) -> list[JobOutcome]:
    """Run every job of ``sweep`` on its backend; ``after_job(sweep_dir)`` runs after each finished job."""
    sweep_dir = Path(results_dir) / sweep.name
    if sweep.backend["kind"] == "submitit":
        from benchmark.slurm import run_with_submitit

        return run_with_submitit(sweep, sweep_dir, after_job)
    tracker = SweepProgress(len(sweep.jobs))
    attempted: dict[Path, JobOutcome] = {}  # an upstream that failed is not retried by the next job that needs it
    for job in sweep.jobs:
        tracker.show(job)
        run_dir = job.run_dir(Path(results_dir), sweep.name)
        outcome = execute_job(job, run_dir, progress, in_subprocess=multi_device(job), attempted=attempted)
        tracker.update(outcome)
        if outcome.status == "failed":
            tracker.console.print(f"[red]FAILED[/red] {job.method.name} / {job.dataset.name} / seed {job.seed}: "
                                  f"{outcome.error}")
        if after_job is not None and outcome.status != "skipped":
            after_job(sweep_dir)
    tracker.show()
    return tracker.outcomes
