"""The paper protocol end to end on miniature releases: prepare IXI, BraTS, ATLAS, MSLUB and FastMRI+ with the
commands in `configs/datasets/ixi_normative.yaml`, load its datamodule, and run a method on it."""

from __future__ import annotations

import json
import shlex

import numpy as np
import yaml

from benchmark.cli import main
from benchmark.config import CONFIG_DIR
from benchmark.sweep import load_sweep
from tests.test_release_atlas_ms import release
from tests.test_release_brats import brats2021
from tests.test_release_fastmri import fastmri_release
from tests.test_release_ixi_hcp import ixi_release

CONFIG = CONFIG_DIR / "datasets" / "ixi_normative.yaml"


def test_documented_paper_protocol_prepares_loads_and_runs(tmp_path):
    roots = {"ixi": ixi_release(tmp_path / "IXI", n=10), "brats": brats2021(tmp_path / "BraTS", n=3),
             "fastmri": fastmri_release(tmp_path / "fastmri")}
    release("atlas", tmp_path / "ATLAS_2", n=2)
    release("mslub", tmp_path / "MSLUB", n=2)
    roots.update(atlas=tmp_path / "ATLAS_2", mslub=tmp_path / "MSLUB")
    data = tmp_path / "data"
    commands = [shlex.split(line.lstrip("# "))[2:] for line in CONFIG.read_text().splitlines()
                if "run_benchmark.py prepare" in line]
    assert [c[1] for c in commands] == ["ixi", "brats", "atlas", "mslub", "fastmri"]
    for args in commands:
        args[args.index("--root") + 1] = str(roots[args[1]])
        out = args.index("--out") + 1 if "--out" in args else None
        target = data / (args[out].removeprefix("data/") if out else args[1])
        args = [*args[:out - 1], *args[out + 1:]] if out else args
        assert main([*args, "--out", str(target)]) == 0, args

    config = yaml.safe_load(CONFIG.read_text())
    init = config["init_args"]
    for key in ("train_csv", "val_csv"):
        init[key] = str(data / init[key].removeprefix("data/"))
    tests = {name: data / path.removeprefix("data/") for name, path in init["test_csvs"].items()}
    init["test_csvs"] = {name: str(path) for name, path in tests.items() if path.is_file()}
    missing = sorted(set(tests) - set(init["test_csvs"]))  # FastMRI+ sets the miniature release has no case of
    assert "fastmri_edema" not in missing and "brats" not in missing and len(missing) < len(tests) - 6
    init.update(cache_dir=str(tmp_path / "cache"), image_size=16, batch_size=8, min_lesion_pixels=1,
                slice_range=[0.3, 0.7], min_roi_fraction=0.05)
    dataset = tmp_path / "ixi_normative.yaml"
    dataset.write_text(yaml.safe_dump(config))

    from benchmark.config import ComponentConfig

    dm = ComponentConfig.from_file(dataset).instantiate(progress=False)
    dm.prepare_data()
    dm.setup()
    assert all(s.startswith("IXI") for s in dm.splits.train.subjects.tolist())  # trained on IXI only
    for name in ("brats", "atlas", "mslub", "fastmri_edema"):
        arrays = dm.splits.tests[name]
        images, masks, rois = (np.asarray(a)[:, 0] for a in (arrays.images, arrays.masks, arrays.rois))
        lesion = masks > 0
        assert lesion.any(), name
        assert images[lesion].mean() > images[(rois > 0) & ~lesion].mean(), name  # bright lesions under the masks
    assert dm.image_shape == (1, 16, 16)

    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1,
                                                   "num_sanity_val_steps": 0}}))
    assert main(["run", "--method", "intensity", "--dataset", str(dataset), "--trainer", str(trainer),
                 "--results-dir", str(tmp_path / "results"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "results" / "adhoc" / "runs" / "ixi_normative" / "intensity" / "seed_0" /
                          "metrics.json").read_text())
    assert set(metrics["test_sets"]) == set(init["test_csvs"])
    assert metrics["test_sets"]["brats"]["pixel"]["n_lesion_pixels"] > 0


def test_paper_sweep_trains_on_ixi_and_keeps_the_synthetic_check():
    sweep = load_sweep("paper", [])
    datasets = {job.dataset.name for job in sweep.jobs}
    assert datasets == {"ixi_normative", "synthetic_brain"}
    assert {job.seed for job in sweep.jobs} == {0, 1, 2} and sweep.jobs[0].profile.name == "gpu"
    ixi = [job for job in sweep.jobs if job.dataset.name == "ixi_normative"]
    assert "ascnet" not in {job.method.name for job in ixi}  # no unlabelled pool in IXI
    assert all(job.dataset.init_args.get("image_size", 128) == 128 for job in ixi)
