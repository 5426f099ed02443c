"""Local worker processes (``backend.workers``): options, scheduling, failures, interruption, determinism."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import benchmark.workers
from benchmark.cli import build_parser, main
from benchmark.config import ConfigError
from benchmark.runner import run_sweep
from benchmark.sweep import DEFAULT_BACKEND, load_sweep
from benchmark.workers import PARENT_PID_ENV, WORKER_LOG, bind_to_parent, worker_threads
from tests.test_diffusion_end_to_end import TINY_DDPM
from tests.tiny_runs import run_dir, run_metrics

REPO = Path(__file__).resolve().parent.parent
RANDOM = "lightning_modules.baselines.RandomBaseline"

# A stand-in for ``run_benchmark.py run --job``: logs its start and end, then behaves as its method's name says.
FAKE_JOB = """
import json, os, signal, sys, time
from pathlib import Path
run_dir, events = Path(sys.argv[1]), sys.argv[2]
method = run_dir.parent.name
def event(text):
    with open(events, "a") as handle:
        handle.write(f"{text} {method} {os.getpid()}\\n")
event("start")
time.sleep(120 if method == "slow" else 0.5)
event("end")
if method == "nan_ae":  # dies without recording anything
    os.kill(os.getpid(), signal.SIGKILL)
failed = method == "exploding"
record = {"status": "failed" if failed else "completed", "key": json.loads((run_dir / "job.json").read_text())["key"]}
if failed:
    record["error"] = {"type": "RuntimeError", "message": "boom: a bug in the method"}
(run_dir / "metrics.json").write_text(json.dumps(record))
sys.exit(1 if failed else 0)
"""


def _write(path: Path, class_path: str, **init_args: Any) -> Path:
    path.write_text(yaml.safe_dump({"class_path": class_path, "init_args": init_args}))
    return path


@pytest.fixture(scope="module")
def setup(tiny_sweep_setup) -> dict[str, Path]:
    root = tiny_sweep_setup["root"] / "workers"
    root.mkdir(exist_ok=True)
    reusing = "tests.test_weights_reuse.ReusingMethod"
    ae = _write(root / "ae_tiny.yaml", "lightning_modules.ae.AutoEncoder", base_channels=4, max_channels=8)
    nan = _write(root / "nan_ae.yaml", "tests.test_weights_reuse.NanAutoEncoder", base_channels=4, max_channels=8)
    paths = {"ae_tiny": ae, "reusing": _write(root / "reusing.yaml", reusing, weights_from=str(ae)),
             "reusing_nan": _write(root / "reusing_nan.yaml", reusing, weights_from=str(nan)),
             "exploding": _write(root / "exploding.yaml", "tests.test_runner.ExplodingMethod"),
             "slow": _write(root / "slow.yaml", RANDOM)}
    return {**tiny_sweep_setup, "configs": root, **paths}


def _sweep(setup, name: str, methods: list[str], **extra: Any) -> Path:
    path = setup["configs"] / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({"methods": [str(setup.get(m, m)) for m in methods],
                                    "datasets": [str(setup["dataset"])], "seeds": [0],
                                    "trainer": str(setup["trainer"]), **extra}))
    return path


@pytest.fixture
def fake_jobs(monkeypatch, tmp_path) -> Path:
    """Workers run :data:`FAKE_JOB` instead of the real job; returns the file of their start / end events."""
    events = tmp_path / "events.txt"
    events.touch()
    monkeypatch.setattr(benchmark.workers, "job_command",
                        lambda run_dir, progress: [sys.executable, "-c", FAKE_JOB, str(run_dir), str(events)])
    return events


def _events(path: Path) -> list[tuple[str, str, int]]:
    return [(kind, method, int(pid)) for kind, method, pid in (line.split() for line in path.read_text().splitlines())]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_options_are_validated(setup):
    sweep = _sweep(setup, "options", ["random", "intensity"])
    loaded = load_sweep(str(sweep))
    assert loaded.backend["workers"] == 1 and loaded.backend["threads_per_worker"] is None
    assert DEFAULT_BACKEND["workers"] == 1
    two = load_sweep(str(sweep), ["backend.workers=2"])
    assert two.backend["workers"] == 2 and worker_threads(two.backend) == max(1, (os.cpu_count() or 1) // 2)
    assert worker_threads(load_sweep(str(sweep), ["backend.workers=2", "backend.threads_per_worker=3"]).backend) == 3
    args = build_parser().parse_args(["sweep", "--config", str(sweep), "--workers", "3"])
    from benchmark.cli import _overrides

    assert "backend.workers=3" in _overrides(args)
    assert "backend.workers=2" in _overrides(build_parser().parse_args(["run", "--workers", "2"]))

    for override in ("backend.workers=0", "backend.workers=-1", "backend.workers=two", "backend.workers=true",
                     "backend.workers=1.5", "backend.workers=null"):
        with pytest.raises(ConfigError, match=r"backend\.workers must be a positive integer"):
            load_sweep(str(sweep), [override])
    for override in ("backend.threads_per_worker=0", "backend.threads_per_worker=[1]"):
        with pytest.raises(ConfigError, match=r"backend\.threads_per_worker must be a positive integer"):
            load_sweep(str(sweep), [override])
    in_yaml = _sweep(setup, "options_yaml", ["random"], backend={"kind": "local", "workers": 0})
    with pytest.raises(ConfigError, match=r"options_yaml\.yaml: backend\.workers must be a positive integer, got 0"):
        load_sweep(str(in_yaml))
    with pytest.raises(ConfigError, match=r"backend\.workers = 2 .* but backend\.kind is submitit"):
        load_sweep(str(sweep), ["backend.workers=2", "backend.kind=submitit"])
    with pytest.raises(ConfigError, match=r"backend\.workers = 2 .* span several devices .*trainer\.devices = 2"):
        load_sweep(str(sweep), ["backend.workers=2", "trainer.devices=2", "trainer.strategy=ddp"])
    load_sweep(str(sweep), ["trainer.devices=2", "trainer.strategy=ddp"])  # one worker: as before
    assert main(["run", "--method", "random", "--dataset", str(setup["dataset"]), "--workers", "0",
                 "--results-dir", str(setup["configs"] / "unused")]) == 2
    assert not (setup["configs"] / "unused").exists()


def test_scheduling_upstreams_failures_and_rerun(setup, fake_jobs, capsys):
    """Up to two jobs at once, in the sweep's order; a dependent after its upstream; failures recorded (also a
    process that died without a word), a dependent of a failed upstream recorded without running."""
    results = setup["configs"] / "scheduled"
    sweep = load_sweep(str(_sweep(setup, "scheduled", ["reusing", "random", "exploding", "reusing_nan"])),
                       ["backend.workers=2"])
    finished: list[Path] = []
    outcomes = run_sweep(sweep, results, progress=False, after_job=finished.append)
    assert [(o.job.method.name, o.status) for o in outcomes] == [
        ("reusing", "completed"), ("random", "completed"), ("exploding", "failed"), ("reusing_nan", "failed")]
    events = _events(fake_jobs)
    started = [method for kind, method, _ in events if kind == "start"]
    assert sorted(started) == ["ae_tiny", "exploding", "nan_ae", "random", "reusing"]  # not reusing_nan
    position = {(kind, method): i for i, (kind, method, _) in enumerate(events)}
    assert position[("end", "ae_tiny")] < position[("start", "reusing")]  # the dependent waits for its upstream
    assert set(started[:2]) == {"ae_tiny", "nan_ae"}  # the upstreams first (the longest chains), then in order
    running, most = 0, 0
    for kind, _, _ in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2
    assert 3 <= len(finished) <= 6 and set(finished) == {results / "scheduled"}  # after finished jobs (batched)

    assert run_metrics(results, "scheduled", "exploding")["error"]["message"] == "boom: a bug in the method"
    nan = run_metrics(results, "scheduled", "nan_ae")  # recorded here: its process died without a word
    assert nan["status"] == "failed" and nan["error"]["type"] == "RuntimeError"
    assert f"exited with code -{int(signal.SIGKILL)}: see " in nan["error"]["message"]
    assert str(run_dir(results, "scheduled", "nan_ae") / WORKER_LOG) in nan["error"]["message"]
    dependent = run_metrics(results, "scheduled", "reusing_nan")
    assert dependent["error"]["type"] == "UpstreamError" and "nan_ae / tiny_brain / seed 0" in \
        dependent["error"]["message"] and "exited with code" in dependent["error"]["message"]
    assert not (run_dir(results, "scheduled", "reusing_nan") / WORKER_LOG).exists()  # never started
    log = (run_dir(results, "scheduled", "random") / WORKER_LOG).read_text()
    assert re.match(r"\[normbench\] \S+ worker of random / tiny_brain / seed 0: .* --threads \d+\n$", log, re.S)
    captured = capsys.readouterr()
    assert captured.err.count("FAILED") == 3 and "boom: a bug in the method" in captured.err
    assert "started random / tiny_brain / seed 0" in captured.out

    fake_jobs.write_text("")  # a rerun: finished jobs skipped, failed ones (and the failed upstream) retried
    outcomes = run_sweep(sweep, results, progress=False)
    assert [o.status for o in outcomes] == ["skipped", "skipped", "failed", "failed"]
    assert sorted(method for kind, method, _ in _events(fake_jobs) if kind == "start") == ["exploding", "nan_ae"]


def test_each_dataset_is_prepared_once_before_the_workers_start(setup, fake_jobs, monkeypatch, capsys):
    """Two workers must not generate the same synthetic data at once: the runner prepares each distinct dataset
    configuration once, itself; a dataset that fails to prepare is left to its jobs (the sweep goes on)."""
    from datamodules.synthetic_brain import SyntheticBrainDataModule

    prepared: list[str] = []

    def prepare(datamodule) -> None:
        prepared.append(str(datamodule.data_root))
        if "broken" in str(datamodule.data_root):
            raise OSError("disk full")

    monkeypatch.setattr(SyntheticBrainDataModule, "prepare_data", prepare)
    spec = yaml.safe_load(setup["dataset"].read_text())
    spec["init_args"]["data_root"] = str(setup["configs"] / "broken_data")
    broken = setup["configs"] / "broken_brain.yaml"
    broken.write_text(yaml.safe_dump(spec))
    path = _sweep(setup, "prepared", ["random", "intensity"])
    sweep = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**sweep, "datasets": [str(setup["dataset"]), str(broken)]}))
    outcomes = run_sweep(load_sweep(str(path), ["backend.workers=2"]), setup["configs"] / "prepared_results",
                         progress=False)
    assert [o.status for o in outcomes] == ["completed"] * 4  # the (fake) jobs ran on both datasets
    assert sorted(prepared) == sorted([spec["init_args"]["data_root"],
                                       yaml.safe_load(setup["dataset"].read_text())["init_args"]["data_root"]])
    assert "preparing broken_brain failed (OSError); its jobs will report it" in capsys.readouterr().out


def test_an_interrupted_runner_stops_its_workers(setup, fake_jobs):
    results = setup["configs"] / "interrupted"
    sweep = load_sweep(str(_sweep(setup, "interrupted", ["slow", "exploding"])), ["backend.workers=2"])

    def interrupt(sweep_dir: Path) -> None:  # Ctrl-C while the slow job runs
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, results, progress=False, after_job=interrupt)
    [(_, _, pid)] = [event for event in _events(fake_jobs) if event[:2] == ("start", "slow")]
    assert not _alive(pid)
    assert not (run_dir(results, "interrupted", "slow") / "metrics.json").exists()  # not a failure: resumable


def test_a_worker_whose_runner_is_gone_does_not_run(monkeypatch):
    monkeypatch.setenv(PARENT_PID_ENV, str(os.getppid() + 1_000_000))
    with pytest.raises(SystemExit, match=r"sweep runner .* is gone"):
        bind_to_parent()


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "run_benchmark.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _results_of(metrics: dict) -> dict:
    """What a job computed (not how long it took, nor the library versions)."""
    run = metrics["run"]
    return {**{key: value for key, value in metrics.items() if key not in ("run", "versions")},
            "steps": (run["epochs"], run["global_steps"], run["torch_threads"])}


@pytest.mark.slow
def test_two_workers_give_the_metrics_of_a_serial_run(setup):
    sweep = _sweep(setup, "parallel", ["random", "intensity", "ae"])
    serial, parallel = setup["configs"] / "serial_results", setup["configs"] / "parallel_results"
    done = _cli("sweep", "--config", str(sweep), "--results-dir", str(serial), "--quiet",
                "backend.threads_per_worker=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(parallel), "--quiet", "--workers", "2",
                 "backend.threads_per_worker=1"]) == 0
    for method in ("random", "intensity", "ae"):
        one, two = run_metrics(serial, "parallel", method), run_metrics(parallel, "parallel", method)
        assert one["status"] == two["status"] == "completed" and two["run"]["torch_threads"] == 1
        assert _results_of(one) == _results_of(two)
        assert re.search(r" run --job \S+/job\.json --quiet --threads 1$",
                         (run_dir(parallel, "parallel", method) / WORKER_LOG).read_text(), re.M)
        assert not (run_dir(serial, "parallel", method) / WORKER_LOG).exists()
    board = pd.read_csv(parallel / "parallel" / "leaderboard.csv")
    assert set(board["method"]) == {"random", "intensity", "ae"} and set(board["status"]) == {"completed"}
    assert (parallel / "parallel" / "report.md").is_file()


@pytest.mark.slow
def test_autoddpm_waits_for_anoddpm_and_a_failure_stays_isolated(setup, capsys):
    sweep = _sweep(setup, "diffusion_workers", ["autoddpm", "anoddpm", "exploding"], overrides=TINY_DDPM)
    results = setup["configs"] / "diffusion_results"
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet", "--workers", "2"]) == 1
    out = capsys.readouterr()
    assert out.out.index("finished anoddpm /") < out.out.index("started autoddpm /")
    assert out.out.index("started exploding /") < out.out.index("finished")  # alongside anoddpm
    assert "FAILED" in out.err and "boom" in out.err
    ano = run_metrics(results, "diffusion_workers", "anoddpm")
    auto = run_metrics(results, "diffusion_workers", "autoddpm")
    assert ano["status"] == auto["status"] == "completed"
    assert auto["run"]["weights_from"]["key"] == ano["key"] and auto["run"]["train_time_s"] == 0
    assert run_metrics(results, "diffusion_workers", "exploding")["status"] == "failed"
    board = pd.read_csv(results / "diffusion_workers" / "leaderboard.csv")
    assert dict(zip(board["method"], board["status"], strict=False))["exploding"] == "failed"


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_a_rerun_resumes_them(setup):
    sweep = _sweep(setup, "terminated", ["ae"], seeds=[0, 1], overrides=["trainer.max_epochs=8"])
    results = setup["configs"] / "terminated_results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(REPO / "run_benchmark.py"), "sweep", "--config", str(sweep),
                                "--results-dir", str(results), "--quiet", "--workers", "2",
                                "backend.threads_per_worker=1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    runs = [run_dir(results, "terminated", "ae").with_name(f"seed_{seed}") for seed in (0, 1)]
    deadline = time.time() + 300
    while not any((run / "checkpoints" / "last.ckpt").is_file() for run in runs) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # mid-training: after a first epoch's checkpoint
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    pids = [int(pid) for pid in re.findall(r"started .* \(pid (\d+),", output)]
    assert len(pids) == 2 and not any(_alive(pid) for pid in pids), output[-3000:]
    assert "stopping 2 running job(s)" in output
    assert not any((run / "metrics.json").exists() for run in runs)  # interrupted, not failed

    rerun = _cli("sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet", "--workers", "2")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    logs = [(run / WORKER_LOG).read_text() for run in runs]
    assert any("resuming" in log for log in logs)
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["run"]["epochs"] == 8
