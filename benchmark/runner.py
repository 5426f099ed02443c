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
run in a child process (Lightning's DDP launcher re-executes the command line, so they must own it); with
``workers: N`` it runs up to N jobs at once, each in a child process of its own (``benchmark/workers.py``).
``submitit`` submits one job per run (a SLURM job array, or local subprocesses with ``cluster: local``).
This module dispatches to those backends; what they share with it (outcomes, run folders made ready, failure
records, the order of unfinished jobs, the progress table) is in ``benchmark/scheduling.py``, which imports none
of them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmark.io import read_json
from benchmark.job import Job, describe_job, job_from_spec, multi_device, run_job, upstream_run_dir
from benchmark.scheduling import (
    JobOutcome,
    SweepProgress,
    is_rank_zero,
    job_command,
    job_process_error,
    prepare_run_dir,
    record_failure,
    upstream_failure,
)
from benchmark.slurm import run_with_submitit
from benchmark.sweep import Sweep
from benchmark.workers import run_with_workers, torch_threads


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
    done = subprocess.run(job_command(run_dir, progress), check=False)
    error = job_process_error(run_dir, done.returncode, "the output above")
    if error is not None:
        raise error


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


def run_sweep(sweep: Sweep, results_dir: Path, progress: bool = True,
              after_job: Callable[[Path], None] | None = None) -> list[JobOutcome]:
    """Run every job of ``sweep`` on its backend; ``after_job(sweep_dir)`` runs after each finished job."""
    sweep_dir = Path(results_dir) / sweep.name
    if sweep.backend["kind"] == "submitit":
        return run_with_submitit(sweep, sweep_dir, run_from_job_file, after_job)
    if sweep.backend.get("workers", 1) > 1:
        return run_with_workers(sweep, sweep_dir, after_job)
    with torch_threads(sweep.backend.get("threads_per_worker")):
        return _run_serially(sweep, Path(results_dir), progress, after_job)


def _run_serially(sweep: Sweep, results_dir: Path, progress: bool,
                  after_job: Callable[[Path], None] | None) -> list[JobOutcome]:
    """The local backend with one worker: every job in this process, one after another (except multi-device
    jobs, each in a child process)."""
    sweep_dir = results_dir / sweep.name
    tracker = SweepProgress(len(sweep.jobs))
    attempted: dict[Path, JobOutcome] = {}  # an upstream that failed is not retried by the next job that needs it
    for job in sweep.jobs:
        tracker.show(job)
        run_dir = job.run_dir(results_dir, sweep.name)
        outcome = execute_job(job, run_dir, progress, in_subprocess=multi_device(job), attempted=attempted)
        tracker.update(outcome)
        if outcome.status == "failed":
            tracker.console.print(f"[red]FAILED[/red] {job.method.name} / {job.dataset.name} / seed {job.seed}: "
                                  f"{outcome.error}")
        if after_job is not None and outcome.status != "skipped":
            after_job(sweep_dir)
    tracker.show()
    return tracker.outcomes
