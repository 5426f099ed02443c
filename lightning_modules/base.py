"""The method contract: every NormBench method is an ``AnomalyModule``.

A method implements training (``training_step`` + ``configure_optimizers``, or manual optimisation) and one
inference function, :meth:`AnomalyModule.predict_anomaly`. The base class owns the validation and test steps:
they call ``predict_anomaly`` and return the :class:`AnomalyOutput`, which the harness's callbacks (evaluation,
image grids) consume. Nothing here knows about metrics or files.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor


@dataclass
class AnomalyOutput:
    """What a method returns for a batch of images [B,C,H,W].

    ``anomaly_map`` [B,1,H,W] >= 0 (higher = more anomalous), ``anomaly_score`` [B], and the
    ``reconstruction`` [B,C,H,W] for methods that restore a healthy image (``None`` otherwise).

    A method with several scoring rules (the VAE's ``rec``, ``grad_kl``, ``combi``, ...) fills ``variants``:
    name -> (map, score) for every rule it declares in :attr:`AnomalyModule.score_variants`; ``anomaly_map`` and
    ``anomaly_score`` are then those of the first (primary) variant. Each variant is evaluated on its own and
    becomes its own leaderboard entry ``<method>[<variant>]``.
    """

    anomaly_map: Tensor
    anomaly_score: Tensor
    reconstruction: Tensor | None = None
    variants: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    @classmethod
    def from_variants(cls, variants: dict[str, tuple[Tensor, Tensor]],
                      reconstruction: Tensor | None = None) -> AnomalyOutput:
        """An output whose primary map and score are those of the first variant."""
        if not variants:
            raise ValueError("from_variants needs at least one (map, score) variant")
        anomaly_map, anomaly_score = next(iter(variants.values()))
        return cls(anomaly_map, anomaly_score, reconstruction, dict(variants))

    def by_variant(self) -> dict[str | None, AnomalyOutput]:
        """One single-score output per variant (``{None: self}`` for a method without variants)."""
        if not self.variants:
            return {None: self}
        return {name: AnomalyOutput(anomaly_map, score, self.reconstruction)
                for name, (anomaly_map, score) in self.variants.items()}

    def detach(self) -> AnomalyOutput:
        rec = None if self.reconstruction is None else self.reconstruction.detach()
        variants = {name: (m.detach(), s.detach()) for name, (m, s) in self.variants.items()}
        return AnomalyOutput(self.anomaly_map.detach(), self.anomaly_score.detach(), rec, variants)


@runtime_checkable
class GenerativeModel(Protocol):
    """A method that can sample images (a GAN's generator, later a diffusion model's sampler).

    The harness measures its generative quality (best SSIM of samples against held-out healthy images) and logs
    a fixed-noise sample grid over training. ``generate`` maps noise from ``sample_noise`` to images in [0, 1] with
    the dataset's shape; it is called under ``torch.no_grad`` with the module in eval mode.
    """

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of the model's input noise (on CPU; ``generate`` moves it to the model's device)."""

    def generate(self, noise: Tensor) -> Tensor:
        """Images [n,C,H,W] in [0, 1] for noise drawn by :meth:`sample_noise`."""


class AnomalyModule(pl.LightningModule):
    """Base class of all methods.

    Class attributes a method may override:
        requires_training: ``False`` for non-learned baselines (the runner skips ``fit``).
        needs_input_gradients: ``True`` when ``predict_anomaly`` differentiates w.r.t. its input (gradient maps,
            latent optimisation); the runner then builds the Trainer with ``inference_mode=False`` and the base
            class enables autograd in validation / test.
        trainer_defaults: Trainer arguments this method needs (merged under the user's trainer profile).
        partial_updates: ``True`` when a training step updates only some of the networks (GANs, staged training), so
            that DDP must look for parameters without gradient (the runner then uses
            ``ddp_find_unused_parameters_true`` instead of ``ddp``).
        predict_during_fit: ``False`` for methods whose anomaly maps are expensive (diffusion chains): validation
            during ``fit`` then only logs ``val/loss`` (no validation maps or image grids over training); the
            healthy calibration and the test still score every image.
        trainer_overrides: Trainer arguments the method must control itself, applied over the profile (a method with
            a schedule of training stages in steps sets ``max_epochs: -1`` and stops ``fit`` when it is done).

    A method that evaluates the trained weights of *another* method's job instead of training its own (AutoDDPM
    reuses an AnoDDPM model) sets ``requires_training = False``, names that method's config in
    :meth:`weights_from` and loads the checkpoint in :meth:`load_pretrained`; the runner links the two jobs (same
    dataset, seed, trainer profile and protocol) and trains the upstream job first when it has not run.

    A method with several scoring rules overrides :attr:`score_variants` (names known before any batch, so that
    every device builds the same metric states) and returns them in :attr:`AnomalyOutput.variants`.
    """

    requires_training: ClassVar[bool] = True
    needs_input_gradients: ClassVar[bool] = False
    trainer_defaults: ClassVar[dict[str, Any]] = {}
    trainer_overrides: ClassVar[dict[str, Any]] = {}
    partial_updates: ClassVar[bool] = False
    predict_during_fit: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # multi-device evaluation gives each rank whole subjects, so a rank may have no batch of a small test set
        self.allow_zero_length_dataloader_with_multiple_devices = True

    @property
    def score_variants(self) -> tuple[str, ...]:
        """Names of the scoring rules in ``AnomalyOutput.variants``, primary first (empty: a single score)."""
        return ()

    @abstractmethod
    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        """Anomaly map, score and optional reconstruction for ``image`` [B,C,H,W] in [0, 1]."""

    def validation_loss(self, batch: dict[str, Any]) -> Tensor | None:
        """Loss on healthy validation data for early stopping and checkpoint selection (``None``: not defined)."""
        return None

    @staticmethod
    def reduce_map(anomaly_map: Tensor) -> Tensor:
        """Default image score: the mean of the map (MedIAnomaly / GenAI convention)."""
        return anomaly_map.flatten(1).mean(dim=1)

    def _predict(self, batch: dict[str, Any]) -> AnomalyOutput:
        if self.needs_input_gradients and torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} differentiates its anomaly maps w.r.t. the input, which inference mode "
                "forbids: build the Trainer with inference_mode=False (the NormBench runner does this for every "
                "method with needs_input_gradients)")
        with torch.set_grad_enabled(self.needs_input_gradients):
            output = self.predict_anomaly(batch["image"])
        return output.detach()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> AnomalyOutput | None:
        loss = self.validation_loss(batch)
        if loss is not None:
            self.log("val/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        if not self.predict_during_fit and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            return None  # an expensive method: validation during fit only computes val/loss
        return self._predict(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        return self._predict(batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> AnomalyOutput:
        return self._predict(batch)

    @classmethod
    def weights_from(cls, init_args: dict[str, Any]) -> str | None:
        """The method config whose trained job this method evaluates (``None``: it trains, or needs no training).
        ``init_args`` are the method's resolved arguments (every default filled in)."""
        return None

    def load_pretrained(self, checkpoint: str) -> None:
        """Take the weights of the upstream job's tested checkpoint (only for methods with :meth:`weights_from`)."""
        raise NotImplementedError(f"{type(self).__name__} does not load weights of another job")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
