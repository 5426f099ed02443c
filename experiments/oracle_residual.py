"""How visible are the synthetic brain's lesions? The pixel AUROC / AUPRC of an *ideal* restoration: the residual
between each test subject's image and the same subject without its lesion through the same gamma and bias field
(drawn from the same seeds) but without noise, which no method can predict, over the brain voxels of the 3D
volume (2 mm, before slicing and resizing to 64 px).

    python experiments/oracle_residual.py [--subjects 8] [--seed 0]

A method that restores images perfectly and scores the absolute residual would reach these numbers and no more:
lesion voxels that the generator blends in at a small weight, or whose target intensity is close to the tissue
they replace (the tumour's oedema keeps 72-85 % of its tissue's intensity), differ from the healthy image by
less than the scanner noise. The subjects are those of the test sets (``sub-test<kind>-NNN`` of dataset seed 0:
the default sweep's first 4, the converged sweep's 8), generated again here in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.transforms import RandAdjustContrast, RandBiasField
from sklearn.metrics import average_precision_score, roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datamodules.synthetic_brain import (  # noqa: E402
    LESION_KINDS,
    SyntheticBrainSpec,
    _make_subject,
    _rng,
)


def noise_free_scanner(healthy: np.ndarray, spec: SyntheticBrainSpec, subject: str) -> np.ndarray:
    """The subject's gamma and bias field applied to ``healthy``, without the Rician noise: the same random draws,
    in the same order, as ``datamodules.synthetic_brain._scanner_effects``."""
    rng = _rng(spec.seed, subject, "scanner")
    rng.uniform(*spec.noise_std_range)  # the noise level, drawn first there
    out = torch.from_numpy(healthy[None].copy())
    for transform in (RandAdjustContrast(prob=1.0, gamma=spec.gamma_range),
                      RandBiasField(prob=1.0, degree=3, coeff_range=(-spec.bias_coeff_max, spec.bias_coeff_max))):
        transform.set_random_state(seed=int(rng.integers(2**31)))
        out = transform(out)
    return np.asarray(out)[0].astype(np.float32)


def oracle(spec: SyntheticBrainSpec, kind: str, n: int) -> dict[str, float]:
    """Pooled brain-voxel AUROC / AUPRC of |image - scanner(healthy)| over ``n`` test subjects of ``kind``."""
    residuals, labels, visible = [], [], []
    for i in range(n):
        subject = _make_subject(spec, f"sub-test{kind}-{i:03d}", kind)
        restored = noise_free_scanner(subject.healthy, spec, subject.subject)
        brain = subject.brain.astype(bool)
        residual = np.abs(subject.image - restored)[brain]
        lesion = subject.mask.astype(bool)[brain]
        noise = np.abs(subject.image - restored)[brain & ~subject.mask.astype(bool)]
        residuals.append(residual)
        labels.append(lesion)
        visible.append((residual[lesion] > np.quantile(noise, 0.95)).mean())
    score, label = np.concatenate(residuals), np.concatenate(labels)
    return {"auroc": float(roc_auc_score(label, score)), "auprc": float(average_precision_score(label, score)),
            "prevalence": float(label.mean()), "visible": float(np.mean(visible))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (configs/datasets/synthetic_brain.yaml)")
    parser.add_argument("--resolution-mm", type=float, default=2.0)
    args = parser.parse_args(argv)
    spec = SyntheticBrainSpec(seed=args.seed, resolution_mm=args.resolution_mm)
    print("| test set | oracle pixel AUROC | oracle pixel AUPRC | lesion share of brain voxels | lesion voxels above "
          "the healthy residual's 95th percentile |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind in LESION_KINDS:
        result = oracle(spec, kind, args.subjects)
        print(f"| {kind} | {result['auroc']:.3f} | {result['auprc']:.3f} | {result['prevalence']:.4f} | "
              f"{result['visible']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
