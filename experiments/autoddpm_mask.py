"""Where does AutoDDPM's likely-anomaly mask fall? For each lesion test set: the share of lesion pixels and of
healthy roi pixels inside the mask, and the pixel AUROC (roi pixels) of the residual the mask is taken from, for
the AnoDDPM weights of a convergence-study checkpoint.

    python experiments/autoddpm_mask.py results/convergence/synthetic_brain/anoddpm [--checkpoint NAME]

AutoDDPM's map is zero outside the mask (the inpainted image equals the input there), so a lesion type whose
pixels fall inside the mask less often than healthy pixels gets a pixel AUROC below 0.5 whatever the residual
ranks (docs/validation.md). Inpainting is skipped: the mask needs only the partial-diffusion reconstruction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from convergence import STUDY_FILE, build_job, load_weights
from sklearn.metrics import roc_auc_score

from benchmark.config import load_component
from benchmark.job import model_links, prepared_datamodule
from lightning_modules.autoddpm import likely_anomaly_mask

LESION_SETS = ("tumor", "ms", "stroke")


def mask_statistics(folder: Path, checkpoint: str | None, batch_size: int = 32) -> dict[str, dict[str, float]]:
    study = json.loads((folder / STUDY_FILE).read_text())
    job = build_job(study["method"], study["dataset"], study["seed"], study["overrides"])
    pl.seed_everything(job.seed, workers=True)
    datamodule = prepared_datamodule(job, progress=False)
    model = job.method.instantiate(**model_links(datamodule))
    name = checkpoint or study["training"]["checkpoints"][-1]["checkpoint"]
    load_weights(model, folder / "checkpoints" / name)
    model.eval()
    auto = load_component("methods", "autoddpm").init_args  # the AutoDDPM config's mask settings
    out: dict[str, dict[str, float]] = {"checkpoint": name}  # type: ignore[dict-item]
    for test_set in LESION_SETS:
        arrays = datamodule.splits.tests[test_set]
        in_mask, lesion, roi, residuals = [], [], [], []
        for start in range(0, len(arrays), batch_size):
            image = torch.as_tensor(np.array(arrays.images[start:start + batch_size], dtype=np.float32))
            with torch.no_grad():
                reconstruction = model.reconstruct(image, auto["t_recon"])
            residual = (image - reconstruction).abs().mean(dim=1, keepdim=True)
            mask = likely_anomaly_mask(residual, auto["residual_percentile"], auto["mask_quantile"],
                                       auto["dilation"], auto["mask_scope"])
            in_mask.append(mask.numpy().astype(bool).ravel())
            residuals.append(residual.numpy().ravel())
            lesion.append(np.asarray(arrays.masks[start:start + batch_size]).astype(bool).ravel())
            roi.append(np.asarray(arrays.rois[start:start + batch_size]).astype(bool).ravel())
        in_mask_all, lesion_all, roi_all = map(np.concatenate, (in_mask, lesion, roi))
        residual_all = np.concatenate(residuals)
        healthy = roi_all & ~lesion_all
        sick = roi_all & lesion_all
        out[test_set] = {"lesion_in_mask": float(in_mask_all[sick].mean()),
                         "healthy_in_mask": float(in_mask_all[healthy].mean()),
                         "residual_auroc": float(roc_auc_score(lesion_all[roi_all], residual_all[roi_all])),
                         "lesion_pixels": int(sick.sum())}
        print(f"[autoddpm-mask] {test_set}: lesion pixels in the mask {out[test_set]['lesion_in_mask']:.3f}, "
              f"healthy roi pixels {out[test_set]['healthy_in_mask']:.3f}, residual AUROC "
              f"{out[test_set]['residual_auroc']:.3f} ({out[test_set]['lesion_pixels']} lesion pixels)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="an AnoDDPM study folder (study.json and checkpoints/)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file name (default: the last)")
    args = parser.parse_args(argv)
    mask_statistics(Path(args.study), args.checkpoint)


if __name__ == "__main__":
    main()
