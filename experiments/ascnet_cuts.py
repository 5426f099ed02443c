"""What ASC-Net's generator cuts: input, lesion, I_fc, I_wc and I_ro of the last checkpoint of one or more
convergence studies, on the tumour slices with the most lesion pixels (one per subject first).

    python experiments/ascnet_cuts.py results/convergence/synthetic_brain/ascnet \\
        results/convergence_32px/synthetic_brain/ascnet --out docs/images/ascnet_cuts.png

A collapsed cut shows I_wc as the brain mask and I_fc as an edge texture, whatever the lesion (docs/validation.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytorch_lightning as pl
import torch
from convergence import STUDY_FILE, build_job, load_weights

from benchmark.job import model_links, prepared_datamodule
from benchmark.qualitative import draw_image, draw_map, row_label, select_slices

PANELS = ("input", "I_fc", "I_wc", "I_ro")


def last_cuts(folder: Path, test_set: str, k: int) -> tuple[str, np.ndarray, np.ndarray, list[np.ndarray]]:
    """The study's label, the chosen slices and lesion masks, and the cuts of its last checkpoint."""
    study = json.loads((folder / STUDY_FILE).read_text())
    job = build_job(study["method"], study["dataset"], study["seed"], study["overrides"])
    pl.seed_everything(job.seed, workers=True)
    datamodule = prepared_datamodule(job, progress=False)
    arrays = datamodule.splits.tests[test_set]
    chosen, _ = select_slices(np.asarray(arrays.masks), np.asarray(arrays.rois), k, arrays.subjects)
    model = job.method.instantiate(**model_links(datamodule))
    mark = study["training"]["checkpoints"][-1]
    load_weights(model, folder / "checkpoints" / mark["checkpoint"])
    image = torch.as_tensor(np.asarray(arrays.images[chosen]), dtype=torch.float32)
    cuts = model.predict_cuts(image)
    mode = study["method_config"]["init_args"].get("generator_discriminator", "batch")  # as trained
    label = f"{image.shape[-1]} px, {mode}, {mark['train_s'] / 60:.0f} min"
    return label, image[:, 0].numpy(), np.asarray(arrays.masks[chosen])[:, 0], \
        [c[:, 0].numpy() for c in (cuts.fc, cuts.wc, cuts.ro)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="study folders (with study.json and checkpoints/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--test-set", default="tumor")
    parser.add_argument("--slices", type=int, default=2)
    args = parser.parse_args(argv)
    rows = [last_cuts(Path(folder), args.test_set, args.slices) for folder in args.studies]
    fig, axes = plt.subplots(len(rows) * args.slices, len(PANELS), figsize=(1.6 * len(PANELS), 1.6 * args.slices
                                                                           * len(rows)), squeeze=False)
    for r, (label, images, masks, cuts) in enumerate(rows):
        for i in range(args.slices):
            row = axes[r * args.slices + i]
            draw_image(row[0], images[i], masks[i])
            for ax, values in zip(row[1:], cuts, strict=True):
                draw_map(ax, values[i], (0.0, 1.0), mask=masks[i])
            if i == 0:
                row_label(row[0], label.replace(", ", "\n"), fontsize=7)
    for ax, name in zip(axes[0], PANELS, strict=True):
        ax.set_title(name, fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0.08, 0, 1, 1))
    fig.savefig(args.out, dpi=110)
    print(f"[ascnet-cuts] wrote {args.out}")


if __name__ == "__main__":
    main()
