"""ASC-Net: adversarial selective cutting (Dey & Hong, MICCAI 2021, arXiv 2103.03664), a faithful and fixed port of
``raun1/ASC-NET`` (Keras / TF1; networks in :mod:`lightning_modules.nets.ascnet`).

The generator cuts an input image into I_fc, the part that lies on the manifold of a reference set of healthy
images (the discriminator must take it for a reference image), and I_wc, the rest (the anomaly); I_ro, a learnt
recombination of both, must reproduce the input. Losses, all weighted 1 as in the original:

* generator phase: L1(D(I_fc), -1) + MSE(I_ro, input) + Dice(I_fc, I_wc) (batch-global soft Dice with smooth 1,
  whose *value* is minimised so that the cuts become disjoint) + 2e-4 x the sum of squares of the 3x3 kernels;
  the discriminator is frozen (faithful, ``generator_discriminator="batch"``: its BatchNorm keeps batch statistics
  and dropout stays on, as Keras' frozen model in training mode, but its running statistics do not move; a batch
  of cuts normalised on its own statistics hides them from a discriminator trained on mixed batches. ``"mixed"``
  scores the cuts inside a batch that also holds reference images, a labelled deviation: the discriminator then
  separates them in training mode, yet the cuts collapse all the same and detect worse on the synthetic brain, so
  the configs keep the faithful ``"batch"``; docs/validation.md, :meth:`AscNet.discriminate_cuts`);
* discriminator phase: L1 to -1 for reference images and +1 for I_fc of input images (``G.predict``: the
  generator in inference mode), + the same L2 on its 3x3 kernels. Stage 2 adds I_fc of reference images to the
  real set and repeats the fakes to balance the counts. Adam lr 5e-5, betas (0.9, 0.999), eps 1e-7 (Keras 2.2.2).

Schedule: the original alternates *whole phases* whose lengths a user types at a prompt, and rebuilds its
discriminator before every phase, so the generator trains against an untrained D (a scoping bug, reading of the
code at HEAD). Here the discriminator persists across phases (the fix) and the phases follow a configurable
schedule: ``stage1_cycles`` then ``stage2_cycles`` cycles of ``d_iterations`` discriminator iterations and
``g_iterations`` generator iterations, counted in training batches
(:class:`~lightning_modules.staged.StagedModule`: one ``fit``, resumable mid-stage). Stage 1's Dice replaces entries
below 1e-16 by 1 (no gradient through them); stage 2's faithful Dice replaces entries *above* 1e-16 by 1, which
makes the disjointness term constant (``stage2_dice: faithful``; ``soft`` keeps the plain soft Dice: a labelled
deviation).

Data: reference images = the datamodule's healthy training split; input images = its ``unlabelled`` pool (the
original's input set), never a test set. Each training batch of reference images is paired with the next batch of
the pool. Anomaly maps (three score variants, each its own leaderboard entry): ``ro`` = I_ro restricted to the
image foreground (the original README thresholds I_ro; the paper's figure shows the mask intersected with the input
foreground), ``wc`` = I_wc restricted to the foreground, ``ro_otsu`` = I_ro binarised per image by Otsu's
threshold over the foreground (the paper's thresholding is [UNVERIFIED]; Otsu is this port's reading, reported
next to the engine's healthy-FPR thresholds of ``ro``). Scores: the map's mean over the foreground. The
reconstruction is I_fc, the cut on the healthy manifold (ASC-Net's restoration of the input), so the qualitative
grids show all three cuts: I_fc as the reconstruction, I_ro and I_wc as the maps of ``ro`` and ``wc``. I_fc, I_wc,
I_ro grids and the I_ro histogram (the original's stopping signal) go to TensorBoard at the end of every phase.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from skimage.filters import threshold_otsu
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_modules.base import AnomalyOutput
from lightning_modules.nets.ascnet import AscNetDiscriminator, AscNetGenerator, Cuts, three_by_three_kernels
from lightning_modules.staged import StagedModule

REFERENCE_LABEL, CUT_LABEL = -1.0, 1.0
DICE_EPSILON = 1e-16
SCORE_VARIANTS = ("ro", "wc", "ro_otsu")


def batch_dice(a: Tensor, b: Tensor, smooth: float = 1.0, replace: Literal["none", "below", "above"] = "none"
               ) -> Tensor:
    """Soft Dice of ``a`` and ``b`` over the whole flattened batch: (2 sum(ab) + smooth) / (sum(a) + sum(b) +
    smooth). ``replace``: entries below (stage 1) or above (stage 2) 1e-16 become 1 first, without gradient."""
    if replace != "none":
        ones = torch.ones_like(a)
        a = torch.where(a < DICE_EPSILON, ones, a) if replace == "below" else torch.where(a > DICE_EPSILON, ones, a)
        b = torch.where(b < DICE_EPSILON, ones, b) if replace == "below" else torch.where(b > DICE_EPSILON, ones, b)
    a, b = a.float().flatten(), b.float().flatten()
    return (2.0 * (a * b).sum() + smooth) / (a.sum() + b.sum() + smooth)


def l2_penalty(module: nn.Module) -> Tensor:
    """Sum of squares of the 3x3 kernels (Keras' kernel_regularizer=l2, added to the loss)."""
    return sum((kernel.float() ** 2).sum() for kernel in three_by_three_kernels(module))


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics but leave their running statistics (and batch counters)
    untouched: momentum 0 while inside."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, tracked) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)


def otsu_masks(maps: Tensor, foreground: Tensor) -> Tensor:
    """Per image, 1 where the map exceeds Otsu's threshold over its foreground pixels (0 where undefined)."""
    masks = torch.zeros_like(maps)
    for i, (values, inside) in enumerate(zip(maps.detach().float().cpu().numpy(), foreground.float().cpu().numpy() > 0,
                                             strict=True)):
        pixels = values[inside]
        if pixels.size and np.ptp(pixels) > 0:
            masks[i] = torch.from_numpy((values > threshold_otsu(pixels)) & inside).to(masks)
    return masks


class AscNet(StagedModule):
    """ASC-Net; ``image_size`` (divisible by 16) is linked from the dataset, which must have one channel and an
    ``unlabelled`` pool."""

    def __init__(
        self,
        image_size: int = 160,
        in_channels: int = 1,
        width: int = 32,
        faithful_batchnorm: bool = True,
        stage1_cycles: int = 4,
        stage2_cycles: int = 2,
        d_iterations: int = 50,
        g_iterations: int = 100,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        l2: float = 2e-4,
        dice_smooth: float = 1.0,
        stage2_dice: Literal["faithful", "soft"] = "faithful",
        generator_discriminator: Literal["batch", "mixed"] = "batch",
        foreground_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if in_channels != 1:
            raise ValueError(f"ASC-Net cuts single-channel images; the dataset has {in_channels} channels")
        if min(stage1_cycles, d_iterations, g_iterations) < 1 or stage2_cycles < 0:
            raise ValueError("stage1_cycles, d_iterations and g_iterations must be >= 1, stage2_cycles >= 0")
        if generator_discriminator not in ("batch", "mixed"):
            raise ValueError(f"generator_discriminator must be 'batch' or 'mixed', got {generator_discriminator!r}")
        if stage2_dice not in ("faithful", "soft"):
            raise ValueError(f"stage2_dice must be 'faithful' or 'soft', got {stage2_dice!r}")
        self.generator = AscNetGenerator(image_size, in_channels, width, faithful_batchnorm)
        self.discriminator = AscNetDiscriminator(image_size, in_channels, width, faithful_batchnorm)
        self._input_loader: Any = None
        self._inputs: Iterator[dict[str, Any]] | None = None
        self._passes = 0

    @property
    def score_variants(self) -> tuple[str, ...]:
        return SCORE_VARIANTS

    # ---- schedule ---------------------------------------------------------------------------------------------
    def stages(self) -> dict[str, int]:
        schedule = {}
        for stage, cycles in ((1, self.hparams.stage1_cycles), (2, self.hparams.stage2_cycles)):
            for cycle in range(cycles):
                schedule[f"stage{stage}/cycle{cycle}/D"] = self.hparams.d_iterations
                schedule[f"stage{stage}/cycle{cycle}/G"] = self.hparams.g_iterations
        return schedule

    def input_batch(self) -> Tensor:
        """The next batch of the unlabelled pool (the original's input set), cycling with a new order per pass. Under
        DDP every rank draws from the whole pool (in its own order)."""
        if self._input_loader is None:
            self._input_loader = self.trainer.datamodule.unlabelled_dataloader()
        while True:
            if self._inputs is None:
                sampler = getattr(self._input_loader, "sampler", None)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self._passes)
                self._inputs, self._passes = iter(self._input_loader), self._passes + 1
            try:
                return next(self._inputs)["image"].to(self.device)
            except StopIteration:
                self._inputs = None

    def train_stage(self, stage: str, image: Tensor) -> None:
        second_stage, phase = stage.startswith("stage2"), stage.rsplit("/", 1)[1]
        inputs = self.input_batch()
        if phase == "D":
            cuts = self.train_discriminator(image, inputs, second_stage)
        else:
            cuts = self.train_generator(inputs, second_stage, reference=image)
        if self.stage_at(int(self.iteration) + 1) != stage:  # the phase ends: the original's inspection point
            self.log_cuts(stage, cuts)

    def predict_cuts(self, image: Tensor) -> Cuts:
        """The generator in inference mode (Keras ``predict``), restoring its mode afterwards."""
        was_training = self.generator.training
        self.generator.eval()
        with torch.no_grad():
            cuts = self.generator(image)
        self.generator.train(was_training)
        return cuts

    def train_discriminator(self, reference: Tensor, inputs: Tensor, second_stage: bool) -> Cuts:
        _, opt_d = self.optimizers()
        cuts = self.predict_cuts(inputs)
        real, fake = reference, cuts.fc
        if second_stage:  # I_fc of reference images joins the real set; the fakes are repeated to balance
            real = torch.cat([reference, self.predict_cuts(reference).fc])
            fake = fake.repeat(max(1, round(len(real) / len(fake))), 1, 1, 1)
        with self.toggled_optimizer(opt_d):
            scores = self.discriminator(torch.cat([real, fake]))
            targets = torch.cat([scores.new_full((len(real),), REFERENCE_LABEL),
                                 scores.new_full((len(fake),), CUT_LABEL)])
            adversarial = (scores.float() - targets).abs().mean()
            loss = adversarial + self.hparams.l2 * l2_penalty(self.discriminator)
            self.update(opt_d, loss)
        self.log_train({"discriminator_loss": adversarial}, len(scores))
        return cuts

    def generator_losses(self, inputs: Tensor, cuts: Cuts, second_stage: bool, reference: Tensor) -> dict[str, Tensor]:
        scores = self.discriminate_cuts(cuts.fc, reference)
        replace = "above" if second_stage and self.hparams.stage2_dice == "faithful" else (
            "none" if second_stage else "below")
        return {"adversarial": (scores.float() - REFERENCE_LABEL).abs().mean(),
                "reconstruction": F.mse_loss(cuts.ro.float(), inputs.float()),
                "disjointness": batch_dice(cuts.fc, cuts.wc, self.hparams.dice_smooth, replace)}

    def discriminate_cuts(self, fc: Tensor, reference: Tensor) -> Tensor:
        """The frozen discriminator's scores of I_fc for the generator's adversarial loss (gradients reach I_fc).

        The discriminator learns on mixed batches (reference images and cuts in one batch, as the original's merged
        and shuffled D set). ``generator_discriminator="batch"`` (faithful: Keras' frozen model in training mode)
        scores a batch of cuts alone, with BatchNorm on that batch's own statistics, which normalises away what
        tells cuts from reference images (measured on a trained model: mean score -0.12 for reference images and
        -0.16 for cuts in that mode): the generator gets no adversarial signal and the cuts collapse into a
        foreground mask (I_wc) and an edge texture (I_fc). ``"mixed"`` (the fix, a labelled deviation) scores the
        cuts inside a batch that also holds ``reference`` images, so BatchNorm sees the statistics it learnt on;
        only the cuts' scores are returned. Either way dropout stays on and the running statistics do not move."""
        self.discriminator.train()
        with frozen_batchnorm_statistics(self.discriminator):
            if self.hparams.generator_discriminator == "mixed":
                return self.discriminator(torch.cat([reference.detach().to(fc.dtype), fc]))[len(reference):]
            return self.discriminator(fc)

    def train_generator(self, inputs: Tensor, second_stage: bool, reference: Tensor) -> Cuts:
        opt_g, _ = self.optimizers()
        with self.toggled_optimizer(opt_g):
            cuts = self.generator(inputs)
            losses = self.generator_losses(inputs, cuts, second_stage, reference)
            total = sum(losses.values()) + self.hparams.l2 * l2_penalty(self.generator)
            self.update(opt_g, total)
        self.log_train({"generator_loss": total, **{f"generator/{k}": v for k, v in losses.items()}}, len(inputs))
        return Cuts(*(t.detach() for t in cuts))

    def log_cuts(self, stage: str, cuts: Cuts) -> None:
        """I_fc | I_wc | I_ro rows of the phase's last batch and the I_ro histogram, to TensorBoard."""
        logger = self.logger
        if not isinstance(logger, TensorBoardLogger) or not self.trainer.is_global_zero:
            return
        rows = [torch.cat(list(t[:8, 0].float().cpu()), dim=1) for t in cuts]  # each [H, 8W]
        step = int(self.iteration)
        logger.experiment.add_image(f"ascnet/{stage}/fc_wc_ro", torch.cat(rows, dim=0)[None], step)
        logger.experiment.add_histogram(f"ascnet/{stage}/I_ro", cuts.ro.float().cpu(), step)

    # ---- inference ----------------------------------------------------------------------------------------------
    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        cuts = self.generator(image)
        foreground = (image.mean(dim=1, keepdim=True) > self.hparams.foreground_threshold).float()
        ro, wc = cuts.ro.float() * foreground, cuts.wc.float() * foreground
        otsu = otsu_masks(cuts.ro.float(), foreground)
        area = foreground.flatten(1).sum(dim=1).clamp_min(1.0)

        def score(anomaly_map: Tensor) -> Tensor:
            return anomaly_map.flatten(1).sum(dim=1) / area

        return AnomalyOutput.from_variants({"ro": (ro, score(ro)), "wc": (wc, score(wc)),
                                            "ro_otsu": (otsu, score(otsu))}, reconstruction=cuts.fc.float())

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        options = {"lr": self.hparams.lr, "betas": tuple(self.hparams.betas), "eps": self.hparams.eps}
        return [torch.optim.Adam(self.generator.parameters(), **options),
                torch.optim.Adam(self.discriminator.parameters(), **options)]
