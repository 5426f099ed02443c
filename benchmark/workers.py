"""Parallel local workers: ``backend: {kind: local, workers: N}`` runs up to N jobs of a sweep at once.

Each job runs in a child process of its own, ``run_benchmark.py run --job <run dir>/job.json --quiet --threads T``,
whose output goes to ``<run dir>/job.log`` (appended to, so a resumed job keeps the log of its earlier attempt),
with ``T`` torch threads (``threads_per_worker``, by default the CPU cores shared out: ``os.cpu_count() // N``,
at least 1; also set as ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``). This process schedules and records:

* each dataset of the unfinished jobs is generated or checked once (its ``prepare_data``) here, before any worker
  starts, so that two workers never generate the same synthetic data at once (a failure is left to the jobs,
  which report it);
* jobs start at most N at a time: first those whose weights other jobs evaluate (so that a chain such as AnoDDPM
  then AutoDDPM does not run alone at the end), then in the sweep's order; finished jobs are skipped as by the
  serial runner;
* a job that evaluates another job's weights (``Job.upstream``) starts once its upstream has finished (an upstream
  that is not a job of the sweep runs once, first); when the upstream failed, the dependent is recorded as failed
  without running;
* a failing job is recorded (by its process, or here when the process died without a word) and the others go on;
  as jobs finish, the leaderboard is rewritten (``after_job``, while the next jobs already run) and the progress
  table printed;
* Ctrl-C or SIGTERM stops the running jobs (SIGTERM, then SIGKILL after a grace period); a later run of the sweep
  resumes them from their ``last.ckpt``. A job process also stops when this process dies without cleaning up
  (Linux: the parent-death signal).

A job's results depend on the threads it ran with only through the order of float summations; ``metrics.json``
records the count (``run.torch_threads``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import torch
from rich.markup import escape

from benchmark.io import read_json
from benchmark.job import Job, describe_job, upstream_run_dir
from benchmark.normative import dataset_key
from benchmark.scheduling import (
    JobOutcome,
    SweepProgress,
    job_command,
    job_process_error,
    record_failure,
    unfinished_jobs,
    upstream_failure,
)
from benchmark.sweep import Sweep

WORKER_LOG = "job.log"
PARENT_PID_ENV = "NORMBENCH_PARENT_PID"  # set for a worker: it stops when that process dies
GRACE_S = 20.0  # how long stopped workers get to exit on SIGTERM before they are killed
POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def worker_threads(backend: dict[str, Any]) -> int:
    """Torch threads of each worker: ``threads_per_worker``, else the CPU cores shared out (at least 1)."""
    threads = backend.get("threads_per_worker")
    return threads if threads is not None else max(1, (os.cpu_count() or 1) // backend.get("workers", 1))


def apply_threads(threads: int) -> None:
    """Use ``threads`` intra-op torch threads in this process (and OpenMP / MKL threads in the processes it starts)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: leave them as they are), restored afterwards."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bind_to_parent() -> None:
    """In a worker: ask Linux for SIGTERM when the runner that started it dies (also when it was killed outright,
    without stopping its workers), and stop at once when it is already gone."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return
    if os.getppid() == int(parent) and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # also when it died just before the request
        raise SystemExit(f"[normbench] the sweep runner (pid {parent}) that started this job is gone")


@dataclass(eq=False)
class Worker:
    """A job running in a child process."""

    job: Job
    run_dir: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float = field(default_factory=time.perf_counter)


def launch(job: Job, run_dir: Path, threads: int) -> Worker:
    """Start the job prepared in ``run_dir`` in a child process, its output appended to ``job.log``."""
    command = [*job_command(run_dir, progress=False), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           PARENT_PID_ENV: str(os.getpid())}
    log = open(run_dir / WORKER_LOG, "ab")  # noqa: SIM115 (closed by finish / stop_workers)
    log.write(f"[normbench] {datetime.now().isoformat(timespec='seconds')} worker of {describe_job(job)}: "
              f"{shlex.join(command)}\n".encode())
    log.flush()
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    except BaseException:
        log.close()
        raise
    return Worker(job, run_dir, process, log)


def announce(worker: Worker, threads: int) -> None:
    """Say which job started in which process, and where its output goes."""
    print(f"[normbench] started {describe_job(worker.job)} (pid {worker.process.pid}, {threads} thread(s); log: "
          f"{worker.run_dir / WORKER_LOG})", flush=True)


def finish(worker: Worker) -> JobOutcome:
    """The outcome of a worker that has exited; a failure its process did not record is recorded here."""
    worker.log.close()
    seconds = time.perf_counter() - worker.started
    error = job_process_error(worker.run_dir, worker.process.returncode, str(worker.run_dir / WORKER_LOG))
    if error is None:
        return JobOutcome(worker.job, "completed", seconds)
    recorded = read_json(worker.run_dir / "metrics.json") or {}
    if recorded.get("status") != "failed":
        recorded = record_failure(worker.job, worker.run_dir, error, seconds)
    return JobOutcome(worker.job, "failed", seconds, f"{recorded['error']['type']}: {recorded['error']['message']}")


def wait_for_any(workers: list[Worker]) -> list[Worker]:
    """Block until at least one of ``workers`` has exited; return those that have."""
    while True:
        exited = [worker for worker in workers if worker.process.poll() is not None]
        if exited:
            return exited
        time.sleep(POLL_S)


def stop_workers(workers: list[Worker], grace_s: float = GRACE_S) -> None:
    """SIGTERM every running worker (Lightning ends the step and exits), SIGKILL those still running after
    ``grace_s``; a worker is never left running, even when this is interrupted again."""
    running = [worker for worker in workers if worker.process.poll() is None]
    if running:
        print(f"[normbench] stopping {len(running)} running job(s); a rerun of the sweep resumes them from their "
              "last.ckpt", file=sys.stderr, flush=True)
    try:
        for worker in running:
            worker.process.terminate()
        deadline = time.monotonic() + grace_s
        for worker in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
            if worker in running and not worker.log.closed:
                worker.log.write(f"[normbench] {datetime.now().isoformat(timespec='seconds')} stopped by the sweep "
                                 "runner; a rerun of the sweep resumes this job\n".encode())
            worker.log.close()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` (so that the block's cleanup runs), as Ctrl-C raises
    KeyboardInterrupt. Outside the main thread signals cannot be handled: the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_with_workers(sweep: Sweep, sweep_dir: Path, after_job: Callable[[Path], None] | None = None
                     ) -> list[JobOutcome]:
    """Run the sweep's unfinished jobs in up to ``backend.workers`` child processes at once (module docstring);
    return the outcome of every job of the sweep, in its order (failures recorded, not raised)."""
    schedule = Schedule(sweep, sweep_dir, after_job)
    prepare_datasets(list(schedule.todo.values()))
    schedule.tracker.show(schedule.next_job())
    try:
        with sigterm_as_exit():
            while schedule.step():
                pass
    except BaseException:
        stop_workers(schedule.running)
        raise
    return [schedule.outcomes[job.run_dir(sweep_dir.parent, sweep.name)] for job in sweep.jobs]


def prepare_datasets(jobs: list[Job]) -> None:
    """Generate or check (``prepare_data``) each distinct dataset configuration of ``jobs`` once, in this process.
    A dataset that fails here is left to its jobs, which fail with the error in their own records."""
    seen: set[str] = set()
    for job in jobs:
        key = dataset_key(job.dataset.resolved())
        if key in seen:
            continue
        seen.add(key)
        print(f"[normbench] preparing {job.dataset.name} (generated or checked once, before the workers start)",
              flush=True)
        try:
            job.dataset.instantiate(progress=False).prepare_data()
        except Exception as error:  # reported by the jobs themselves, with their run folders
            print(f"[normbench] preparing {job.dataset.name} failed ({type(error).__name__}); its jobs will report "
                  "it", flush=True)


class Schedule:
    """A sweep run by local workers: the jobs left to start (``todo``), the workers running (``running``) and the
    ``outcomes``, all by run folder (the sweep's jobs and their upstreams)."""

    def __init__(self, sweep: Sweep, sweep_dir: Path, after_job: Callable[[Path], None] | None) -> None:
        self.sweep_dir, self.after_job = sweep_dir, after_job
        self.workers, self.threads = sweep.backend["workers"], worker_threads(sweep.backend)
        self.members = {job.run_dir(sweep_dir.parent, sweep.name) for job in sweep.jobs}
        self.tracker = SweepProgress(len(sweep.jobs), parallel=self.workers)
        self.outcomes, todo = unfinished_jobs(sweep, sweep_dir)  # each upstream before its dependents
        upstreams = {upstream_run_dir(run_dir, job) for run_dir, job in todo.items() if job.upstream is not None}
        # jobs whose weights others wait for first (the longest chains), then the sweep's order
        self.todo = dict(sorted(todo.items(), key=lambda item: item[0] not in upstreams))
        for run_dir, outcome in self.outcomes.items():
            if run_dir in self.members:
                self.tracker.update(outcome)
        self.running: list[Worker] = []
        self.unreported = False  # jobs finished since the last report

    def next_job(self) -> Job | None:
        return next(iter(self.todo.values()), None)

    def step(self) -> bool:
        """Start what may start, report what finished, wait for a worker to exit; False when all is done."""
        self.start_ready()
        self.report()  # the leaderboard is rewritten while the jobs just started run
        if not self.running:
            if self.todo:  # cannot happen for a sweep built by build_sweep (cycles are rejected)
                raise RuntimeError(f"jobs wait for each other's weights in a cycle: {sorted(map(str, self.todo))}")
            return False
        for worker in wait_for_any(self.running):
            self.running.remove(worker)
            self.finished(worker.run_dir, finish(worker))
        return True

    def start_ready(self) -> None:
        """In the sweep's order, start each job whose upstream (if any) has finished while a worker is free;
        record a job whose upstream failed as failed without running it."""
        for run_dir, job in list(self.todo.items()):
            upstream = self.outcomes.get(upstream_run_dir(run_dir, job)) if job.upstream is not None else None
            if job.upstream is not None and upstream is None:
                continue  # its upstream is still to run
            if upstream is not None and upstream.status == "failed":
                del self.todo[run_dir]
                self.finished(run_dir, _upstream_failed(job, run_dir, upstream))
            elif len(self.running) < self.workers:
                del self.todo[run_dir]
                self.running.append(launch(job, run_dir, self.threads))
                announce(self.running[-1], self.threads)

    def finished(self, run_dir: Path, outcome: JobOutcome) -> None:
        """Keep a job's outcome and say it (``FAILED`` with the error for a failure)."""
        self.outcomes[run_dir] = outcome
        if outcome.status == "failed":
            log = run_dir / WORKER_LOG
            where = f" (log: {log})" if log.is_file() and str(log) not in (outcome.error or "") else ""
            self.tracker.console.print(
                f"[red]FAILED[/red] {escape(f'{describe_job(outcome.job)}: {outcome.error}{where}')}")
        else:
            print(f"[normbench] finished {describe_job(outcome.job)} ({outcome.seconds:.1f} s)", flush=True)
        if run_dir in self.members:
            self.tracker.update(outcome)
        self.unreported = True

    def report(self) -> None:
        """After jobs finished: rewrite the leaderboard (``after_job``) and show the progress."""
        if not self.unreported:
            return
        self.unreported = False
        if self.after_job is not None:
            self.after_job(self.sweep_dir)
        self.tracker.show(self.next_job(), running=len(self.running))


def _upstream_failed(job: Job, run_dir: Path, upstream: JobOutcome) -> JobOutcome:
    """Record ``job`` as failed, without running it, because its upstream failed."""
    error = upstream_failure(job, run_dir, upstream.error)
    record_failure(job, run_dir, error, 0.0)
    return JobOutcome(job, "failed", error=f"{type(error).__name__}: {error}")
