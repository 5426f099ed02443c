"""GAN methods: gradient penalty, network layouts, the stage schedule with frozen G / D, AnoGAN's latent mapping."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_modules.base import GenerativeModel
from lightning_modules.dcgan import DCGAN
from lightning_modules.fanogan import FAnoGAN
from lightning_modules.gan import anogan_mapping, gradient_penalty, to_model_space
from lightning_modules.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from lightning_modules.nets.resnet_gan import ResNetCritic, ResNetGenerator, batch_norm


class QuadraticCritic(nn.Module):
    """D(x) = 0.5 ||A x||^2, whose input gradient A^T A x is known in closed form."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(n, n, dtype=torch.float64) / n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x.flatten(1).to(self.a.dtype) @ self.a.T) ** 2).sum(dim=1)


def test_gradient_penalty_equals_hand_computation():
    critic = QuadraticCritic(12)
    real, fake = torch.randn(5, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    torch.manual_seed(7)
    penalty = gradient_penalty(critic, real, fake)
    torch.manual_seed(7)
    alpha = torch.rand(5, 1, 1, 1)  # the same draw as inside gradient_penalty
    mixed = (real.float() + alpha * (fake.float() - real.float())).double().flatten(1)
    a = critic.a.detach()
    gradient = mixed @ (a.T @ a)  # d/dx 0.5 ||A x||^2 = A^T A x (A^T A symmetric)
    expected = ((gradient.norm(dim=1) - 1.0) ** 2).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_penalty_is_float32_under_bf16_autocast_and_differentiable():
    critic = ResNetCritic(8, 1, dim=2)
    real, fake = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = gradient_penalty(critic, real, fake)
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)
    penalty.backward()  # create_graph: the critic's parameters get a gradient of the penalty
    assert critic.stem.weight.grad is not None and critic.stem.weight.grad.abs().sum() > 0


def test_penalty_alone_drives_the_critic_gradient_norm_to_one():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    real, fake = torch.randn(64, 1, 4, 4), torch.randn(64, 1, 4, 4) + 2.0

    def mean_distance_from_one() -> float:
        mixed = (real + torch.rand(64, 1, 1, 1) * (fake - real)).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed)
        return float((grad.flatten(1).norm(dim=1) - 1.0).abs().mean())

    before = mean_distance_from_one()
    optimiser = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        gradient_penalty(critic, real, fake).backward()
        optimiser.step()
    after = mean_distance_from_one()
    assert before > 0.3 and after < 0.05


@pytest.mark.parametrize("size", [64, 128])
def test_resnet_gan_layouts(size):
    generator, critic = ResNetGenerator(size, 1, 128, dim=8), ResNetCritic(size, 1, dim=8)
    encoder = ResNetCritic(size, 1, 8, out_features=128, norm=batch_norm, tanh_output=True)
    z = torch.randn(2, 128)
    image = generator(z)
    assert image.shape == (2, 1, size, size) and image.abs().max() <= 1
    assert len(generator.blocks) == len(critic.blocks) == int(math.log2(size // 4))
    assert critic(image).shape == (2, 1)
    assert critic.features(image).shape == (2, 8 * 8 * 4 * 4) == (2, critic.feature_dim)  # 8192 at dim 64
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())  # per-sample norm only
    assert all(m.num_groups == 1 for m in critic.modules() if isinstance(m, nn.GroupNorm))
    assert any(isinstance(m, nn.BatchNorm2d) for m in generator.modules())
    code = encoder(image)
    assert code.shape == (2, 128) and code.abs().max() < 1  # tanh output
    shortcuts = [m for m in generator.blocks.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [m.out_channels for m in shortcuts] == [8 * w for w in ([8, 4, 2, 1] if size == 64 else [8, 8, 4, 2, 1])]


@pytest.mark.parametrize("size, widths", [(64, [8, 4, 2, 1]), (128, [16, 8, 4, 2, 1])])
def test_dcgan_layouts_and_initialisation(size, widths):
    torch.manual_seed(0)
    generator, discriminator = DCGANGenerator(size, 1, 100, 64), DCGANDiscriminator(size, 1, 64)
    transposed = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in transposed] == [64 * w for w in widths] + [1]
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64 * w for w in widths[::-1]] + [1]
    layers = list(discriminator.body)
    assert isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], nn.LeakyReLU)  # no BN on D's input layer
    assert layers[1].negative_slope == 0.2
    assert isinstance(list(generator.net)[-1], nn.Tanh) and isinstance(list(generator.net)[-2], nn.ConvTranspose2d)
    weights = torch.cat([m.weight.flatten() for m in transposed])
    assert weights.mean().abs() < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.02)
    image = generator(torch.randn(2, 100))
    assert image.shape == (2, 1, size, size)
    assert discriminator(image).shape == (2,)
    assert discriminator.features(image).shape == (2, 64 * widths[0] * 16)


# ---- the schedule in a Trainer --------------------------------------------------------------------------------
class Images(Dataset):
    def __init__(self, n: int = 12, size: int = 16) -> None:
        self.images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class StageSnapshots(pl.Callback):
    """Parameters and buffers of every network when the encoder stage starts and when fit ends."""

    def __init__(self, switch: int) -> None:
        self.switch, self.snapshots = switch, {}

    @staticmethod
    def _state(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(pl_module.iteration) == self.switch:
            self.snapshots["switch"] = {n: self._state(getattr(pl_module, n)) for n in ("generator", "critic",
                                                                                       "encoder")}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.snapshots["end"] = {n: self._state(getattr(pl_module, n)) for n in ("generator", "critic", "encoder")}


def _trainer(max_epochs: int = -1, callbacks=(), precision: str = "32-true") -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                      precision=precision)


def test_encoder_stage_leaves_generator_and_critic_unchanged_and_fit_stops_after_the_schedule():
    torch.manual_seed(0)
    model = FAnoGAN(image_size=16, dim=4, z_dim=8, gan_iterations=7, encoder_iterations=6, critic_iterations=2)
    initial = StageSnapshots._state(model.generator)
    snapshots = StageSnapshots(switch=7)
    trainer = _trainer(max_epochs=-1, callbacks=[snapshots])  # the schedule decides the length (as in the runner)
    trainer.fit(model, DataLoader(Images(12), batch_size=4))
    assert int(model.iteration) == 13 and model.stage is None and trainer.current_epoch >= 4
    switch, end = snapshots.snapshots["switch"], snapshots.snapshots["end"]
    for name in ("generator", "critic"):  # weights and BatchNorm running statistics
        assert all(torch.equal(switch[name][k], end[name][k]) for k in switch[name]), name
    assert any(not torch.equal(switch["encoder"][k], end["encoder"][k]) for k in switch["encoder"])
    # stage 1 did train G (3 generator updates for 7 critic iterations at critic_iterations 2, the first skipped)
    assert not torch.equal(initial["project.weight"], switch["generator"]["project.weight"])


def test_fanogan_trains_under_bf16_mixed():
    torch.manual_seed(0)
    model = FAnoGAN(image_size=16, dim=4, z_dim=8, gan_iterations=4, encoder_iterations=2, critic_iterations=2)
    trainer = _trainer(precision="bf16-mixed")
    trainer.fit(model, DataLoader(Images(8), batch_size=4))
    assert int(model.iteration) == 6
    output = model.predict_anomaly(torch.rand(3, 1, 16, 16))
    assert output.anomaly_map.shape == (3, 1, 16, 16) and torch.isfinite(output.anomaly_score).all()
    assert (output.anomaly_map >= 0).all() and output.reconstruction.shape == (3, 1, 16, 16)


def test_fanogan_score_is_image_plus_kappa_feature_residual():
    torch.manual_seed(0)
    model = FAnoGAN(image_size=16, dim=4, z_dim=8, kappa=0.5).eval()
    image = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        output = model.predict_anomaly(image)
        x = to_model_space(image)
        rec = model.generator(model.encoder(x))
        expected = ((x - rec) ** 2).mean(dim=(1, 2, 3)) + 0.5 * (
            (model.critic.features(x) - model.critic.features(rec)) ** 2).mean(dim=1)
    assert torch.allclose(output.anomaly_score, expected, rtol=1e-5)
    assert torch.allclose(output.anomaly_map, (image - (rec + 1) / 2).abs(), atol=1e-6)


def test_gans_are_generative_models_with_images_in_unit_range():
    for model in (FAnoGAN(image_size=16, dim=4, z_dim=8), DCGAN(image_size=16, features=4, z_dim=8)):
        assert isinstance(model, GenerativeModel)
        noise = model.sample_noise(3, torch.Generator().manual_seed(0))
        assert torch.equal(noise, model.sample_noise(3, torch.Generator().manual_seed(0)))
        with torch.no_grad():
            images = model.eval().generate(noise)
        assert images.shape == (3, 1, 16, 16) and images.min() >= 0 and images.max() <= 1


# ---- AnoGAN mapping -------------------------------------------------------------------------------------------
def _dcgan_pair(seed: int = 0) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    torch.manual_seed(seed)
    return DCGANGenerator(16, 1, 8, 8).eval(), DCGANDiscriminator(16, 1, 8).eval()


def test_anogan_mapping_lowers_its_loss_on_average():
    generator, discriminator = _dcgan_pair()
    with torch.no_grad():  # a fixed image the generator can reach, searched from 8 different starts
        image = generator(torch.randn(1, 8, generator=torch.Generator().manual_seed(1))).expand(8, -1, -1, -1)
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))
    mapping = anogan_mapping(image, generator, discriminator.features, z, steps=120, weight=0.1, lr=5e-2)
    mean = mapping.history.mean(dim=1)  # average over the starts
    windows = mean[:120].view(12, 10).mean(dim=1)
    assert (windows[1:] < windows[:-1]).all()  # monotone decrease of the windowed average
    assert mean[-1] < 0.5 * mean[0]
    expected = 0.9 * (image - mapping.generated).abs().sum(dim=(1, 2, 3)) + 0.1 * (
        discriminator.features(image) - discriminator.features(mapping.generated)).abs().sum(dim=1)
    assert torch.allclose(mapping.loss, expected.detach(), rtol=1e-5)


def test_batched_mapping_equals_one_search_per_image_and_leaves_networks_untouched():
    generator, discriminator = _dcgan_pair()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    z = torch.randn(3, 8)
    batched = anogan_mapping(images, generator, discriminator.features, z, steps=15)
    for i in range(3):
        single = anogan_mapping(images[i:i + 1], generator, discriminator.features, z[i:i + 1], steps=15)
        assert torch.allclose(single.z, batched.z[i:i + 1], atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())
    assert all(p.grad is None for p in [*generator.parameters(), *discriminator.parameters()])


def test_dcgan_predicts_under_autograd_and_refuses_inference_mode():
    torch.manual_seed(0)
    model = DCGAN(image_size=16, features=4, z_dim=8, mapping_steps=5).eval()
    output = model._predict({"image": torch.rand(2, 1, 16, 16)})
    assert output.anomaly_map.shape == (2, 1, 16, 16) and (output.anomaly_map >= 0).all()
    assert torch.isfinite(output.anomaly_score).all() and not output.anomaly_score.requires_grad
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        model._predict({"image": torch.rand(2, 1, 16, 16)})


def test_bad_arguments():
    with pytest.raises(ValueError, match="encoder loss"):
        FAnoGAN(image_size=16, encoder="zz")
    with pytest.raises(ValueError, match="power-of-two"):
        FAnoGAN(image_size=48)
    with pytest.raises(ValueError, match="mapping_weight"):
        DCGAN(image_size=16, mapping_weight=2.0)
    with pytest.raises(ValueError, match="image size"):
        DCGAN(image_size=8)
