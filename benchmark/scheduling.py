"""What every sweep backend shares (the serial loop in ``runner.py``, local workers in ``workers.py``, submitit in
``slurm.py``): a job's outcome, its run folder made ready (:func:`prepare_run_dir`), failure records, the order in
which unfinished jobs run (:func:`unfinished_jobs`, each upstream first), the command line of a job process and the
progress table. The backends import this module; it imports none of them.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmark.io import read_json, write_json
from benchmark.job import (
    METRICS_SCHEMA,
    Job,
    describe_job,
    job_key,
    job_spec,
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


def job_command(run_dir: Path, progress: bool) -> list[str]:
    """The command line that runs the job prepared in ``run_dir`` (its ``job.json``) in a process of its own."""
    return [sys.executable, str(Path(__file__).resolve().parent.parent / "run_benchmark.py"), "run",
            "--job", str(run_dir / JOB_FILE)] + ([] if progress else ["--quiet"])


def job_process_error(run_dir: Path, returncode: int, output: str) -> RuntimeError | None:
    """Why a job process (:func:`job_command`) did not complete its job, or None when it did; ``output``: where
    its output went (named in the error when the job left no message of its own)."""
    if returncode != 0:
        metrics = read_json(run_dir / "metrics.json") or {}
        detail = metrics.get("error", {}).get("message", f"see {output}")
        return RuntimeError(f"job process exited with code {returncode}: {detail}")
    if (read_json(run_dir / "metrics.json") or {}).get("status") != "completed":
        return RuntimeError("job process finished without a completed metrics.json")
    return None


@dataclass
class SweepProgress:
    """A Rich status table of the sweep between jobs: done, failed, skipped, remaining and the ETA."""

    total: int
    console: Console = field(default_factory=lambda: Console(stderr=True))
    outcomes: list[JobOutcome] = field(default_factory=list)
    parallel: int = 1  # jobs running at once (local workers): the ETA divides by it, the table shows "running"

    def update(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)

    def show(self, next_job: Job | None = None, running: int = 0) -> None:
        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("completed", "skipped", "failed")}
        remaining = self.total - len(self.outcomes)
        ran = [o.seconds for o in self.outcomes if o.status != "skipped"]
        eta = f"{remaining * sum(ran) / len(ran) / self.parallel / 60:.1f} min" if ran and remaining else "-"
        table = Table(title="NormBench sweep", show_edge=False)
        columns = ("done", "failed", "skipped", "remaining", "ETA", "next")
        for column in columns if self.parallel == 1 else (*columns[:3], "running", *columns[3:]):
            table.add_column(column)
        upcoming = f"{next_job.method.name} / {next_job.dataset.name} / seed {next_job.seed}" if next_job else "-"
        cells = [str(counts["completed"]), str(counts["failed"]), str(counts["skipped"]), str(remaining), eta,
                 upcoming]
        table.add_row(*(cells if self.parallel == 1 else [*cells[:3], str(running), *cells[3:]]))
        self.console.print(table)


def unfinished_jobs(sweep: Sweep, sweep_dir: Path) -> tuple[dict[Path, JobOutcome], dict[Path, Job]]:
    """The finished jobs (outcome ``skipped``) and the unfinished ones (run folder -> job) of a sweep, each
    unfinished upstream (also one that is not a job of the sweep, once) before the jobs that need it, and every
    run folder made ready (:func:`prepare_run_dir`). For backends that run jobs in other processes."""
    finished: dict[Path, JobOutcome] = {}
    todo: dict[Path, Job] = {}

    def visit(job: Job, run_dir: Path) -> None:
        if run_dir in finished or run_dir in todo:
            return
        if prepare_run_dir(job, run_dir) == "finished":
            finished[run_dir] = JobOutcome(job, "skipped")
            return
        if job.upstream is not None:  # only for an unfinished dependent: a finished one needs nothing
            visit(job.upstream, upstream_run_dir(run_dir, job))
        todo[run_dir] = job

    for job in sweep.jobs:
        visit(job, job.run_dir(sweep_dir.parent, sweep.name))
    return finished, todo
