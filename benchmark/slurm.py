"""The ``submitit`` backend: one job per run on SLURM (or local subprocesses with ``cluster: local``).

Backend options (sweep YAML ``backend:`` or ``backend.<key>=`` overrides): ``cluster`` (slurm, local, debug),
``partition``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``timeout_min``, ``array_parallelism``,
``additional_parameters``. Each run is submitted as ``run_from_job_file(<run dir>/job.json)``: the worker rebuilds
the job from its folder, runs it with the same failure isolation as the local backend and writes its files
there; the leaderboard is rewritten (under its file lock) as each run finishes. A multi-device job asks SLURM for
one task per device, which Lightning's SLURM environment turns into a DDP run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.job import Job
from benchmark.runner import JOB_FILE, JobOutcome, SweepProgress, device_count, prepare_run_dir, run_from_job_file
from benchmark.sweep import Sweep


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


def run_with_submitit(sweep: Sweep, sweep_dir: Path, after_job: Callable[[Path], None] | None = None
                      ) -> list[JobOutcome]:
    """Submit every unfinished job, wait for all, and return their outcomes (failures recorded, not raised)."""
    import submitit

    cluster = None if sweep.backend["cluster"] == "slurm" else sweep.backend["cluster"]
    executor = submitit.AutoExecutor(folder=sweep_dir / "submitit" / "%j", cluster=cluster)
    tracker = SweepProgress(len(sweep.jobs))
    todo: list[tuple[Job, Path]] = []
    for job in sweep.jobs:
        run_dir = job.run_dir(sweep_dir.parent, sweep.name)
        if prepare_run_dir(job, run_dir) == "finished":
            tracker.update(JobOutcome(job, "skipped"))
        else:
            todo.append((job, run_dir))
    pending: list[tuple[Job, Any]] = []
    if todo:  # every job of a sweep shares its trainer profile, hence its resources: one job array
        executor.update_parameters(name=f"normbench-{sweep.name}", **executor_parameters(sweep.backend, todo[0][0]))
        with executor.batch():
            handles = [executor.submit(run_from_job_file, run_dir / JOB_FILE, False) for _, run_dir in todo]
        pending = [(job, handle) for (job, _), handle in zip(todo, handles, strict=True)]
    tracker.console.print(f"[normbench] submitted {len(pending)} job(s) with submitit "
                          f"({sweep.backend['cluster']}); logs in {sweep_dir / 'submitit'}")
    for job, handle in pending:
        try:
            handle.result()
            outcome = JobOutcome(job, "completed")
        except Exception as error:
            outcome = JobOutcome(job, "failed", error=f"{type(error).__name__}: {str(error)[:500]}")
            tracker.console.print(f"[red]FAILED[/red] {job.method.name} / {job.dataset.name} / seed {job.seed}")
        tracker.update(outcome)
        if after_job is not None:
            after_job(sweep_dir)
    tracker.show()
    return tracker.outcomes
