"""Jobs that evaluate another job's weights (``AnomalyModule.weights_from``): linking, keys, runner, submitit waves."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

import benchmark.runner
from benchmark.cli import main
from benchmark.config import ConfigError
from benchmark.job import _resolved_spec, job_from_spec, job_key, job_spec, upstream_run_dir
from benchmark.runner import run_sweep
from benchmark.sweep import load_sweep
from lightning_modules.ae import AutoEncoder
from lightning_modules.base import AnomalyModule, AnomalyOutput
from tests.tiny_runs import run_dir, run_metrics


class ReusingMethod(AnomalyModule):
    """Evaluates a trained autoencoder job's weights: the residual |x - AE(x)| (the AE's own map)."""

    requires_training = False

    def __init__(self, weights_from: str = "ae", image_size: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.ae: AutoEncoder | None = None

    @classmethod
    def weights_from(cls, init_args: dict[str, Any]) -> str | None:
        return init_args["weights_from"]

    def load_pretrained(self, checkpoint: str) -> None:
        self.ae = AutoEncoder.load_from_checkpoint(checkpoint, map_location="cpu")

    def predict_anomaly(self, image: torch.Tensor) -> AnomalyOutput:
        if self.ae is None:
            raise RuntimeError("no weights loaded")
        residual = (image - self.ae(image)).abs().mean(dim=1, keepdim=True)
        return AnomalyOutput(residual, residual.flatten(1).mean(dim=1))


class FineTunedAutoEncoder(AutoEncoder):
    """Trains on from another autoencoder job's weights: a chain, whose own checkpoint a dependent may evaluate."""

    def __init__(self, weights_from: str = "ae", image_size: int = 64, in_channels: int = 1) -> None:
        super().__init__(image_size=image_size, in_channels=in_channels, base_channels=4, max_channels=8)

    @classmethod
    def weights_from(cls, init_args: dict[str, Any]) -> str | None:
        return init_args["weights_from"]

    def load_pretrained(self, checkpoint: str) -> None:
        self.load_state_dict(AutoEncoder.load_from_checkpoint(checkpoint, map_location="cpu").state_dict())


class NanAutoEncoder(AutoEncoder):
    """An autoencoder whose loss turns into NaN (a diverging upstream)."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * float("nan")


def _write(path: Path, class_path: str, **init_args: Any) -> Path:
    path.write_text(yaml.safe_dump({"class_path": class_path, "init_args": init_args}))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: on a busy machine, synchronising threads costs far more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_sweep_setup) -> dict[str, Path]:
    root = tiny_sweep_setup["root"]
    reusing = "tests.test_weights_reuse.ReusingMethod"
    ae = _write(root / "ae_tiny.yaml", "lightning_modules.ae.AutoEncoder", base_channels=4, max_channels=8)
    nan = _write(root / "nan_ae.yaml", "tests.test_weights_reuse.NanAutoEncoder", base_channels=4, max_channels=8)
    paths = {"ae": ae, "nan": nan, "reusing": _write(root / "reusing.yaml", reusing, weights_from=str(ae)),
             "finetuned": _write(root / "finetuned.yaml", "tests.test_weights_reuse.FineTunedAutoEncoder",
                                 weights_from=str(ae)),
             "chain": _write(root / "chain.yaml", reusing, weights_from=str(root / "finetuned.yaml")),
             "reusing_nan": _write(root / "reusing_nan.yaml", reusing, weights_from=str(nan)),
             "unknown": _write(root / "reusing_unknown.yaml", reusing, weights_from="no_such_method"),
             "untrained": _write(root / "reusing_random.yaml", reusing, weights_from="random"),
             "cycle_a": _write(root / "cycle_a.yaml", reusing, weights_from=str(root / "cycle_b.yaml")),
             "cycle_b": _write(root / "cycle_b.yaml", reusing, weights_from=str(root / "cycle_a.yaml"))}
    return {**tiny_sweep_setup, **paths}


def _sweep(setup, name: str, methods: list[str], **extra: Any) -> Path:
    path = setup["root"] / "reuse_sweeps" / f"{name}.yaml"  # apart from the method configs
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({"methods": [str(setup.get(m, m)) for m in methods],
                                    "datasets": [str(setup["dataset"])], "seeds": [0],
                                    "trainer": str(setup["trainer"]), "overrides": ["trainer.max_epochs=1"],
                                    **extra}))
    return path


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The method of every job that ``run_job`` runs (in this process) from now on."""
    seen: list[str] = []
    original = benchmark.runner.run_job

    def counting(job, run_dir, progress=True):
        seen.append(job.method.name)
        return original(job, run_dir, progress=progress)

    monkeypatch.setattr(benchmark.runner, "run_job", counting)
    return seen


def _mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.rglob("*")) if path.is_file()}


def test_linking_keys_and_spec_round_trip(setup):
    both = load_sweep(str(_sweep(setup, "link", ["ae", "reusing"])))
    ae, reusing = both.jobs
    assert ae.upstream is None and reusing.upstream is ae  # the sweep's own job
    assert "upstream" not in _resolved_spec(ae) and "upstream" not in job_spec(ae)  # unchanged keys of plain jobs
    assert _resolved_spec(reusing)["upstream"] == job_key(ae)

    rebuilt = job_from_spec(json.loads(json.dumps(job_spec(reusing))))
    assert job_key(rebuilt) == job_key(reusing) and rebuilt.upstream is not None
    assert job_key(rebuilt.upstream) == job_key(ae) and rebuilt.upstream.method.name == "ae_tiny"
    assert upstream_run_dir(Path("r/s/runs/tiny_brain/reusing/seed_0"), reusing) == \
        Path("r/s/runs/tiny_brain/ae_tiny/seed_0")

    [alone] = load_sweep(str(_sweep(setup, "alone", ["reusing"]))).jobs  # the upstream built from its config
    assert alone.upstream is not None and job_key(alone.upstream) == job_key(ae) and job_key(alone) == job_key(reusing)
    assert job_key(load_sweep(str(_sweep(setup, "plain", ["ae"]))).jobs[0]) == job_key(ae)

    chain = load_sweep(str(_sweep(setup, "chain", ["chain"]))).jobs[0]  # chain -> finetuned -> ae_tiny
    assert chain.upstream.method.name == "finetuned" and job_key(chain.upstream.upstream) == job_key(ae)
    assert job_key(job_from_spec(json.loads(json.dumps(job_spec(chain))))) == job_key(chain)

    changed = load_sweep(str(_sweep(setup, "link", ["ae", "reusing"])), ["methods.ae_tiny.lr=0.002"]).jobs
    assert changed[1].upstream is changed[0] and changed[0].upstream is None
    assert job_key(changed[0]) != job_key(ae) and job_key(changed[1]) != job_key(reusing)
    assert changed[1].method.resolved() == reusing.method.resolved()  # only the upstream differs


def test_configuration_errors(setup):
    with pytest.raises(ConfigError, match=r"reusing_unknown\.yaml: weights_from = 'no_such_method'.*unknown method"):
        load_sweep(str(_sweep(setup, "unknown", ["unknown", "ae"])))
    with pytest.raises(ConfigError, match=r"cycle \((cycle_a -> cycle_b -> cycle_a|cycle_b -> cycle_a -> cycle_b)\)"):
        load_sweep(str(_sweep(setup, "cycle", ["cycle_a"])))
    with pytest.raises(ConfigError, match=r"weights_from = 'random'.*does not train"):
        load_sweep(str(_sweep(setup, "untrained", ["untrained"])))
    with pytest.raises(ConfigError, match=r"excludes ae_tiny on dataset tiny_brain, whose job reusing evaluates"):
        load_sweep(str(_sweep(setup, "excluded", ["reusing", "ae"], exclude=[{"method": "ae_tiny"}])))


def test_reusing_job_evaluates_the_upstream_checkpoint_without_retraining(setup, calls):
    results = setup["root"] / "reuse_results"
    sweep = load_sweep(str(_sweep(setup, "reuse", ["reusing", "ae"])))  # the dependent first: it runs its upstream
    assert [o.status for o in run_sweep(sweep, results, progress=False)] == ["completed", "completed"]
    assert calls == ["ae_tiny", "reusing"]  # the upstream trains once
    ae, reusing = run_metrics(results, "reuse", "ae_tiny"), run_metrics(results, "reuse", "reusing")
    assert ae["status"] == reusing["status"] == "completed"
    tested = ae["evaluation"]["checkpoint"]
    assert tested.startswith("best-epoch")
    assert reusing["run"]["weights_from"] == {"method": "ae_tiny", "run_dir": "tiny_brain/ae_tiny/seed_0",
                                              "key": ae["key"], "checkpoint": tested}
    assert reusing["run"]["train_time_s"] == 0 and "weights_from" not in ae["run"]
    config = yaml.safe_load((run_dir(results, "reuse", "reusing") / "config.yaml").read_text())
    assert config["weights_from"] == reusing["run"]["weights_from"]
    assert set(reusing["test_sets"]) == set(ae["test_sets"])
    for name, result in ae["test_sets"].items():  # the same map from the same weights
        assert reusing["test_sets"][name]["pixel"]["auroc"] == pytest.approx(result["pixel"]["auroc"], abs=1e-6)
        assert reusing["test_sets"][name]["sample"]["auroc"] == pytest.approx(result["sample"]["auroc"], abs=1e-6,
                                                                              nan_ok=True)

    # a rerun skips both; the upstream's checkpoints are untouched
    checkpoints = _mtimes(run_dir(results, "reuse", "ae_tiny") / "checkpoints")
    assert [o.status for o in run_sweep(sweep, results, progress=False)] == ["skipped", "skipped"]
    assert calls == ["ae_tiny", "reusing"]
    assert _mtimes(run_dir(results, "reuse", "ae_tiny") / "checkpoints") == checkpoints

    # a sweep without the upstream: it runs first in the sibling folder, then the dependent evaluates its weights
    only = load_sweep(str(_sweep(setup, "reuse_only", ["reusing"])))
    assert [o.status for o in run_sweep(only, results, progress=False)] == ["completed"]
    assert calls[2:] == ["ae_tiny", "reusing"]
    upstream = run_metrics(results, "reuse_only", "ae_tiny")
    assert upstream["status"] == "completed" and upstream["key"] == ae["key"]
    assert run_metrics(results, "reuse_only", "reusing")["run"]["weights_from"]["key"] == ae["key"]

    # checkpoints deleted: the dependent cannot run and says how to recover; the finished upstream is not retrained
    for path in (run_dir(results, "reuse", "ae_tiny") / "checkpoints").iterdir():
        path.unlink()
    (run_dir(results, "reuse", "reusing") / "metrics.json").unlink()
    assert [o.status for o in run_sweep(sweep, results, progress=False)] == ["failed", "skipped"]
    assert calls[4:] == ["reusing"]
    failed = run_metrics(results, "reuse", "reusing")
    assert failed["status"] == "failed" and "--overwrite" in failed["error"]["message"]
    assert str(run_dir(results, "reuse", "ae_tiny") / "checkpoints" / tested) in failed["error"]["message"]


def test_failed_upstream_fails_the_dependent_and_the_sweep_goes_on(setup, calls):
    results = setup["root"] / "failing_results"
    sweep = _sweep(setup, "failing", ["reusing_nan", "random"])  # the upstream is not one of the sweep's jobs
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 1
    assert calls == ["nan_ae", "random"]  # the upstream runs first, the dependent does not run
    assert run_metrics(results, "failing", "nan_ae")["status"] == "failed"
    assert run_metrics(results, "failing", "random")["status"] == "completed"
    dependent = run_metrics(results, "failing", "reusing_nan")
    message = dependent["error"]["message"]
    assert dependent["status"] == "failed" and dependent["error"]["type"] == "UpstreamError"
    assert "nan_ae / tiny_brain / seed 0" in message and str(run_dir(results, "failing", "nan_ae")) in message
    assert "NonFiniteLossError" in message


class _Handle:
    def __init__(self, function, args) -> None:
        self.function, self.args = function, args

    def result(self):
        return self.function(*self.args)


class _FakeExecutor:
    """submitit's AutoExecutor, running each job in this process when its result is asked for."""

    waves: ClassVar[list[list[str]]] = []

    def __init__(self, folder, cluster=None) -> None:
        self.current: list[str] = []

    def update_parameters(self, **parameters) -> None:
        pass

    @contextlib.contextmanager
    def batch(self):
        self.current = []
        yield
        _FakeExecutor.waves.append(self.current)

    def submit(self, function, *args):
        self.current.append(Path(args[0]).parent.parent.name)
        return _Handle(function, args)


def test_submitit_submits_upstreams_in_an_earlier_wave(setup, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit, "AutoExecutor", _FakeExecutor)
    _FakeExecutor.waves = []
    results = setup["root"] / "waves_results"
    sweep = load_sweep(str(_sweep(setup, "waves", ["chain", "reusing_nan", "random"],
                                  backend={"kind": "submitit", "cluster": "local"})))
    outcomes = run_sweep(sweep, results, progress=False)  # chain evaluates finetuned, which trains on from ae_tiny
    assert [set(wave) for wave in _FakeExecutor.waves] == [{"ae_tiny", "nan_ae", "random"}, {"finetuned"}, {"chain"}]
    assert [(o.job.method.name, o.status) for o in outcomes] == [("chain", "completed"), ("reusing_nan", "failed"),
                                                                  ("random", "completed")]
    assert "nan_ae" in run_metrics(results, "waves", "reusing_nan")["error"]["message"]
    finetuned = run_metrics(results, "waves", "finetuned")
    assert finetuned["run"]["weights_from"]["key"] == run_metrics(results, "waves", "ae_tiny")["key"]
    assert finetuned["run"]["train_time_s"] > 0
    assert run_metrics(results, "waves", "chain")["run"]["weights_from"] == {
        "method": "finetuned", "run_dir": "tiny_brain/finetuned/seed_0", "key": finetuned["key"],
        "checkpoint": finetuned["evaluation"]["checkpoint"]}

    _FakeExecutor.waves = []  # a rerun: the finished jobs are skipped, the failed upstream is retried first
    outcomes = run_sweep(sweep, results, progress=False)
    assert [o.status for o in outcomes] == ["skipped", "failed", "skipped"] and _FakeExecutor.waves == [["nan_ae"]]
