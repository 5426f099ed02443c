"""The ``submitit`` backend: one job per run on SLURM (or local subprocesses with ``cluster: local``).

Backend options (sweep YAML ``backend:`` or ``backend.<key>=`` overrides): ``cluster`` (slurm, local, debug),
``partition``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``timeout_min``, ``array_parallelism``,
``additional_parameters``. Each run is submitted as the runner's ``run_from_job_file(<run dir>/job.json)`` (passed
in: this module does not import the runner): the worker rebuilds the job from its folder, runs it with the same
failure isolation as the local backend and writes its files there; the leaderboard is rewritten (under its file
lock) as each run finishes. A multi-device job asks SLURM for one task per device, which Lightning's SLURM
environment turns into a DDP run. Jobs that evaluate another job's weights are submitted in a later wave than their
upstream (see :func:`run_with_submitit`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.job import Job, describe_job, device_count, upstream_run_dir
from benchmark.scheduling import (
    JOB_FILE,
    JobOutcome,
    SweepProgress,
    record_failure,
    unfinished_jobs,
    upstream_failure,
)
from benchmark.sweep import Sweep

RunJobFile = Callable[[Path, bool], Any]  # (job.json, progress) -> anything; raises when the job failed


def executor_parameters(backend: dict[str, Any], job: Job) -> dict[str, Any]:
    """submitit ``update_parameters`` arguments for one job (cluster-prefixed keys only reach that cluster)."""
    devices = max(device_count(job.profile.trainer.get("devices", 1)), 1)
    nodes = max(device_count(job.profile.trainer.get("num_nodes", 1)), 1)
    parameters = {
        "timeout_min": backend["timeout_min"],
        "cpus_per_task": backend["cpus_per_task"],
        "mem_gb": backend["mem_gb"],
        "nodes": nodes,
        "tasks_per_node": devices,
        "slurm_array_parallelism": backend["array_parallelism"],
        "slurm_additional_parameters": dict(backend["additional_parameters"] or {}),
    }
    if job.profile.trainer.get("accelerator", "auto") != "cpu":
        parameters["gpus_per_node"] = backend["gpus_per_node"]
    if backend["partition"]:
        parameters["slurm_partition"] = backend["partition"]
    return parameters


def run_with_submitit(sweep: Sweep, sweep_dir: Path, run_job_file: RunJobFile,
                      after_job: Callable[[Path], None] | None = None) -> list[JobOutcome]:
    """Submit every unfinished job, wait for all, and return their outcomes (failures recorded, not raised).

    Each submitted job runs ``run_job_file(<run dir>/job.json, False)`` (the runner passes its
    ``run_from_job_file``; it must be importable by the workers, which unpickle it).

    Jobs that evaluate another job's weights go in later waves: first every unfinished upstream (also those that
    are not jobs of the sweep, each once) with every independent job, then, once those are done, the jobs that
    need them (a dependent worker would otherwise train its upstream alongside the upstream's own worker). A
    dependent whose upstream failed is recorded as failed without being submitted."""
    import submitit

    cluster = None if sweep.backend["cluster"] == "slurm" else sweep.backend["cluster"]
    executor = submitit.AutoExecutor(folder=sweep_dir / "submitit" / "%j", cluster=cluster)
    tracker = SweepProgress(len(sweep.jobs))
    # by run folder: the sweep's jobs and their upstreams; unfinished ones in todo, each upstream before its dependents
    outcomes, todo = unfinished_jobs(sweep, sweep_dir)
    wave_number = 0
    while todo:
        waiting = len(todo)
        wave: list[tuple[Job, Path]] = []
        for run_dir, job in list(todo.items()):
            upstream_dir = upstream_run_dir(run_dir, job) if job.upstream is not None else None
            if upstream_dir is not None and upstream_dir not in outcomes:
                continue  # its upstream is in this wave or a later one
            del todo[run_dir]
            upstream = outcomes.get(upstream_dir) if upstream_dir is not None else None
            if upstream is not None and upstream.status == "failed":
                error = upstream_failure(job, run_dir, upstream.error)
                record_failure(job, run_dir, error, 0.0)
                outcomes[run_dir] = JobOutcome(job, "failed", error=f"{type(error).__name__}: {error}")
                tracker.console.print(f"[red]FAILED[/red] {describe_job(job)}: its upstream failed")
                if after_job is not None:
                    after_job(sweep_dir)
            else:
                wave.append((job, run_dir))
        if len(todo) == waiting:  # cannot happen for a sweep built by build_sweep (cycles are rejected)
            raise RuntimeError(f"jobs wait for each other's weights in a cycle: {sorted(map(str, todo))}")
        if not wave:
            continue
        wave_number += 1
        # every job of a sweep shares its trainer profile, hence its resources: one job array per wave
        executor.update_parameters(name=f"normbench-{sweep.name}", **executor_parameters(sweep.backend, wave[0][0]))
        with executor.batch():
            handles = [executor.submit(run_job_file, run_dir / JOB_FILE, False) for _, run_dir in wave]
        tracker.console.print(f"[normbench] submitted {len(wave)} job(s) with submitit ({sweep.backend['cluster']}, "
                              f"wave {wave_number}); logs in {sweep_dir / 'submitit'}")
        for (job, run_dir), handle in zip(wave, handles, strict=True):
            try:
                handle.result()
                outcome = JobOutcome(job, "completed")
            except Exception as error:
                outcome = JobOutcome(job, "failed", error=f"{type(error).__name__}: {str(error)[:500]}")
                tracker.console.print(f"[red]FAILED[/red] {describe_job(job)}")
            outcomes[run_dir] = outcome
            if after_job is not None:
                after_job(sweep_dir)
    if wave_number == 0:
        tracker.console.print("[normbench] submitted 0 job(s) with submitit: every job is finished")
    for job in sweep.jobs:
        tracker.update(outcomes[job.run_dir(sweep_dir.parent, sweep.name)])
    tracker.show()
    return tracker.outcomes
