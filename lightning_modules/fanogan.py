"""f-AnoGAN (Schlegl et al., Medical Image Analysis 2019): a WGAN-GP trained on healthy images, then an encoder
that maps images into its latent space, with G and D frozen.

Faithful to ``tSchlegl/f-AnoGAN`` (``wgangp_64x64.py``, ``z_encoding_izif.py``, ``anomaly_detection.py``):

* stage ``gan`` (``gan_iterations`` critic iterations = training batches): WGAN-GP with the ResNet generator and
  critic of :mod:`lightning_modules.nets.resnet_gan` (critic normalisation ``GroupNorm(1, C)``, generator
  BatchNorm), z = 128 ~ N(0, I), Adam lr 1e-4 betas (0, 0.9) for both, 5 critic iterations per generator
  iteration (the first generator update skipped, as in the original loop), gradient penalty 10 in float32 even
  under mixed precision; training images in [-1, 1], flipped left-right with probability 0.5;
* stage ``encoder`` (``encoder_iterations``): the encoder (critic topology with BatchNorm, tanh output) trained
  with RMSProp lr 5e-5 while G and D are frozen (G in eval mode, its BatchNorm on running statistics).
  ``encoder: izif`` (default): L = MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x)))) with f the critic's last
  residual features, kappa = 1; ``izi``: the image term only; ``ziz``: MSE(z, E(G(z))) on generated images;
* anomaly score A(x) = A_R + kappa * A_D (mean squared image and feature residuals, ``anomaly_score: izif``) or the
  mean of the map (``residual``, the GenAI benchmark's choice); anomaly map |x - G(E(x))| (channel mean, in [0, 1]
  image units), the common reading of the paper [UNVERIFIED: the original code has no localisation].

Both stages run in one ``fit``, switched by the iteration count (:class:`~lightning_modules.gan.GANModule`), so a
run killed in stage 2 resumes there from ``last.ckpt`` without redoing stage 1. There is no validation loss to
select a checkpoint on: the final weights are tested, as in the original. Deviations: RMSProp uses PyTorch's
update with TF1's decay 0.9 and epsilon 1e-10 (TF adds epsilon inside the square root); a config choice of the
CPU profile (``configs/methods/fanogan.yaml``) narrows the networks and shortens both stages, with the faithful
values in its comments.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_modules.base import AnomalyOutput
from lightning_modules.gan import GANModule, gradient_penalty, random_hflip, to_image_space, to_model_space
from lightning_modules.nets.resnet_gan import ResNetCritic, ResNetGenerator, batch_norm

ENCODER_LOSSES = ("izif", "izi", "ziz")
ANOMALY_SCORES = ("izif", "residual")


class FAnoGAN(GANModule):
    """WGAN-GP + izi_f encoder; ``image_size`` (64 or 128, any power of two >= 8) and ``in_channels`` are linked
    from the dataset."""

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        z_dim: int = 128,
        dim: int = 64,
        gan_iterations: int = 100_000,
        encoder_iterations: int = 50_000,
        critic_iterations: int = 5,
        gp_weight: float = 10.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        encoder: Literal["izif", "izi", "ziz"] = "izif",
        encoder_lr: float = 5e-5,
        kappa: float = 1.0,
        anomaly_score: Literal["izif", "residual"] = "izif",
        flip: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if encoder not in ENCODER_LOSSES:
            raise ValueError(f"unknown encoder loss {encoder!r}; use one of {ENCODER_LOSSES}")
        if anomaly_score not in ANOMALY_SCORES:
            raise ValueError(f"unknown anomaly_score {anomaly_score!r}; use one of {ANOMALY_SCORES}")
        if min(gan_iterations, encoder_iterations, critic_iterations) < 1:
            raise ValueError("gan_iterations, encoder_iterations and critic_iterations must be >= 1")
        self.z_dim = z_dim
        self.generator = ResNetGenerator(image_size, in_channels, z_dim, dim)
        self.critic = ResNetCritic(image_size, in_channels, dim)
        self.encoder = ResNetCritic(image_size, in_channels, dim, out_features=z_dim, norm=batch_norm,
                                    tanh_output=True)
        self._generator_loss: Tensor | None = None

    def stages(self) -> dict[str, int]:
        return {"gan": self.hparams.gan_iterations, "encoder": self.hparams.encoder_iterations}

    def prepare_batch(self, image: Tensor) -> Tensor:
        return to_model_space(random_hflip(image) if self.hparams.flip else image)

    def train_stage(self, stage: str, image: Tensor) -> None:
        if stage == "gan":
            self.train_gan(image)
        else:
            self.train_encoder(image)

    # ---- stage 1: WGAN-GP ---------------------------------------------------------------------------------------
    def train_gan(self, real: Tensor) -> None:
        opt_g, opt_d, _ = self.optimizers()
        if self.iteration > 0 and self.iteration % self.hparams.critic_iterations == 0:
            with self.toggled_optimizer(opt_g):
                generator_loss = -self.critic(self.generator(self.noise_like(real))).mean()
                self.update(opt_g, generator_loss)
            self._generator_loss = generator_loss.detach()
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():
                fake = self.generator(self.noise_like(real))
            critic_real, critic_fake = self.critic(real).mean(), self.critic(fake).mean()
            penalty = gradient_penalty(self.critic, real, fake)
            critic_loss = critic_fake - critic_real + self.hparams.gp_weight * penalty
            self.update(opt_d, critic_loss)
        logged = {"discriminator_loss": critic_loss, "wasserstein": critic_real - critic_fake,
                  "gradient_penalty": penalty}
        if self._generator_loss is not None:  # the latest generator update (one per critic_iterations batches)
            logged["generator_loss"] = self._generator_loss
        self.log_train(logged, real.shape[0])

    # ---- stage 2: encoder ---------------------------------------------------------------------------------------
    def freeze_gan(self) -> None:
        """G and D in eval mode for the encoder stage and inference (Lightning puts the module back in train mode
        after every validation, so this runs every encoder iteration)."""
        self.generator.eval()
        self.critic.eval()

    def encoder_loss(self, x: Tensor) -> Tensor:
        kappa = self.hparams.kappa
        if self.hparams.encoder == "ziz":
            z = self.noise_like(x)
            with torch.no_grad():
                generated = self.generator(z)
            return F.mse_loss(self.encoder(generated).float(), z)
        reconstruction = self.generator(self.encoder(x))
        loss = F.mse_loss(reconstruction.float(), x.float())
        if self.hparams.encoder == "izif":
            with torch.no_grad():
                target = self.critic.features(x)
            loss = loss + kappa * F.mse_loss(self.critic.features(reconstruction).float(), target.float())
        return loss

    def train_encoder(self, image: Tensor) -> None:
        *_, opt_e = self.optimizers()
        self.freeze_gan()
        with self.toggled_optimizer(opt_e):
            loss = self.encoder_loss(image)
            self.update(opt_e, loss)
        self.log_train({"encoder_loss": loss}, image.shape[0])

    def fit_validation(self, batch: dict[str, Any]) -> None:
        if self.stage_at(max(int(self.iteration) - 1, 0)) == "encoder":
            self.log("val/encoder_loss", self.encoder_loss(to_model_space(batch["image"])),
                     batch_size=batch["image"].shape[0], sync_dist=True)

    # ---- inference ----------------------------------------------------------------------------------------------
    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        self.freeze_gan()
        x = to_model_space(image)
        reconstruction = self.generator(self.encoder(x)).float()
        restored = to_image_space(reconstruction)
        anomaly_map = (image.float() - restored).abs().mean(dim=1, keepdim=True)
        if self.hparams.anomaly_score == "residual":
            score = self.reduce_map(anomaly_map)
        else:
            image_term = ((x.float() - reconstruction) ** 2).flatten(1).mean(dim=1)
            feature_term = ((self.critic.features(x).float() - self.critic.features(reconstruction).float()) ** 2
                            ).mean(dim=1)
            score = image_term + self.hparams.kappa * feature_term
        return AnomalyOutput(anomaly_map, score, restored)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = tuple(self.hparams.betas)
        return [torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=self.hparams.lr, betas=betas),
                torch.optim.RMSprop(self.encoder.parameters(), lr=self.hparams.encoder_lr, alpha=0.9, eps=1e-10)]
