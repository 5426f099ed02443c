"""AnoDDPM / AutoDDPM against closed forms and numpy / scipy references.

References: the DDPM forward marginal and posterior (Ho et al., 2020, eqs. 4, 6, 7) computed with numpy from the
linear beta schedule; DDIM's deterministic path (Song et al., 2021) with an oracle denoiser; the Bayes-optimal
denoiser of Gaussian data (the reverse process then samples that Gaussian); numpy percentiles / quantiles and
``scipy.ndimage.binary_dilation`` for AutoDDPM's mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import Tensor, nn

from lightning_modules.anoddpm import AnoDDPM
from lightning_modules.autoddpm import AutoDDPM, likely_anomaly_mask, repaint
from lightning_modules.diffusion import DiffusionProcess

T = 1000
BETAS = np.linspace(1e-4, 2e-2, T)
ALPHA_BAR = np.cumprod(1.0 - BETAS)
TINY = dict(image_size=16, channels=(8, 8, 16), attention_levels=(False, False, True), num_head_channels=16,
            norm_num_groups=8)


class OracleDenoiser(nn.Module):
    """Predicts the exact noise that separates x_t from a known x_0: eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)."""

    def __init__(self, x0: Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        ab = torch.as_tensor(ALPHA_BAR, dtype=torch.float64)[t].view(-1, 1, 1, 1)
        return ((x_t.double() - ab.sqrt() * self.x0.double()) / (1 - ab).sqrt()).float()


class GaussianPriorDenoiser(nn.Module):
    """The Bayes-optimal noise prediction when every pixel of x_0 is N(mu, s^2):
    E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)."""

    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        ab = torch.as_tensor(ALPHA_BAR, dtype=torch.float64)[t].view(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * (x_t.double() - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)
        return eps.float()


def test_forward_noising_matches_the_closed_form():
    process = DiffusionProcess()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=generator)
    noise = torch.randn(4, 1, 8, 8, generator=generator)
    for t in (0, 1, 250, 999):
        expected = np.sqrt(ALPHA_BAR[t]) * x0.numpy() + np.sqrt(1 - ALPHA_BAR[t]) * noise.numpy()
        np.testing.assert_allclose(process.q_sample(x0, t, noise).numpy(), expected, atol=1e-5)  # float32 cumprod
    per_image = torch.tensor([3, 100, 500, 900])
    expected = (np.sqrt(ALPHA_BAR[per_image.numpy()])[:, None, None, None] * x0.numpy()
                + np.sqrt(1 - ALPHA_BAR[per_image.numpy()])[:, None, None, None] * noise.numpy())
    np.testing.assert_allclose(process.q_sample(x0, per_image, noise).numpy(), expected, atol=1e-5)
    assert torch.equal(process.q_sample(x0, -1, noise), x0)  # before step 0: the clean image
    # the marginal's moments by sampling
    samples = process.q_sample(torch.full((20000, 1, 1, 1), 0.7), 400, torch.randn(20000, 1, 1, 1, generator=generator))
    assert abs(samples.mean().item() - np.sqrt(ALPHA_BAR[400]) * 0.7) < 0.02
    assert abs(samples.var().item() - (1 - ALPHA_BAR[400])) < 0.02


def test_ddpm_step_is_the_posterior_of_the_closed_form():
    process = DiffusionProcess(clip_denoised=False)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 8, 8, generator=generator)
    t = 300
    x_t = process.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
    eps = OracleDenoiser(x0)(x_t, torch.full((2,), t))
    mean = (np.sqrt(ALPHA_BAR[t - 1]) * BETAS[t] / (1 - ALPHA_BAR[t]) * x0.numpy()
            + np.sqrt(1 - BETAS[t]) * (1 - ALPHA_BAR[t - 1]) / (1 - ALPHA_BAR[t]) * x_t.numpy())
    std = np.sqrt(BETAS[t] * (1 - ALPHA_BAR[t - 1]) / (1 - ALPHA_BAR[t]))
    draws = torch.stack([process.step(eps, t, x_t) for _ in range(400)])
    np.testing.assert_allclose(draws.mean(0).numpy(), mean, atol=4 * std / np.sqrt(400) * 1.5)
    np.testing.assert_allclose(draws.std(0).mean().item(), std, rtol=0.05)
    x_first = process.q_sample(x0, 0, torch.randn(x0.shape, generator=generator))
    first_eps = OracleDenoiser(x0)(x_first, torch.zeros(2, dtype=torch.long))
    # no noise at step 0; tolerance: eps / sqrt(1 - alpha_bar_0) = eps / 0.01 amplifies float32 rounding
    np.testing.assert_allclose(process.step(first_eps, 0, x_first).numpy(), x0.numpy(), atol=5e-4)


def test_ddim_with_an_oracle_denoiser_walks_the_deterministic_path_back_to_x0():
    process = DiffusionProcess(sampler="ddim", inference_steps=20)
    assert process.grid(250) == [250, 200, 150, 100, 50, 0] and process.previous(250) == 200
    generator = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 1, 8, 8, generator=generator) * 0.8
    noise = torch.randn(x0.shape, generator=generator)
    oracle = OracleDenoiser(x0)
    x_t = process.q_sample(x0, 250, noise)
    stepped = process.step(oracle(x_t, torch.full((2,), 250)), 250, x_t)
    np.testing.assert_allclose(stepped.numpy(), process.q_sample(x0, 200, noise).numpy(), atol=1e-5)
    np.testing.assert_allclose(process.reverse(oracle, x_t, 250).numpy(), x0.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="inference_steps"):
        DiffusionProcess(sampler="ddpm", inference_steps=20)
    with pytest.raises(ValueError, match="noise level"):
        process.grid(1000)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_partial_diffusion_changes_an_image_more_at_larger_noise_levels(sampler):
    """With the Bayes-optimal denoiser of the 'healthy' distribution, reconstructing from a small noise level stays
    close to the input; from a large one it approaches a fresh sample of that distribution."""
    model = AnoDDPM(**TINY, sampler=sampler, inference_steps=None if sampler == "ddpm" else 100).eval()
    model.unet = GaussianPriorDenoiser(mu=0.5, s=0.1)
    generator = torch.Generator().manual_seed(3)
    healthy = (0.5 + 0.1 * torch.randn(8, 1, 16, 16, generator=generator)).clamp(0, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        change = [(model.reconstruct(healthy, level) - healthy).abs().mean().item() for level in (10, 100, 300, 700)]
    assert change == sorted(change) and change[0] < 0.5 * change[-1], change
    assert change[-1] == pytest.approx(np.sqrt(2) * 0.1 * np.sqrt(2 / np.pi), rel=0.25)  # ~ |a - b|, a, b ~ N(., s^2)


def test_noise_prediction_loss_validation_determinism_and_mixed_precision():
    torch.manual_seed(0)
    model = AnoDDPM(**TINY)
    images = torch.rand(4, 1, 16, 16)
    batch = {"image": images}
    assert model.validation_loss(batch).item() == model.validation_loss(batch).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.noise_prediction_loss(images)
        reconstruction = model.eval().reconstruct(images, 50)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert reconstruction.dtype == torch.float32 and reconstruction.min() >= 0 and reconstruction.max() <= 1
    simplex = AnoDDPM(**TINY, noise="simplex", simplex_frequency=8.0)
    noise = simplex.process.noise_like(images)
    assert torch.allclose(noise.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.isfinite(simplex.noise_prediction_loss(images))


def test_generation_gives_images_of_the_dataset_shape():
    model = AnoDDPM(**TINY, sampler="ddim", inference_steps=5).eval()
    noise = model.sample_noise(3, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 1, 16, 16)
    with torch.no_grad():
        images = model.generate(noise)
    assert images.shape == (3, 1, 16, 16) and images.min() >= 0 and images.max() <= 1


def _numpy_mask(residual: np.ndarray, percentile: float, quantile: float, dilation: int, scope: str) -> np.ndarray:
    ratio = residual / np.maximum(np.percentile(residual.reshape(len(residual), -1), percentile, axis=1),
                                  1e-8)[:, None, None, None]
    if scope == "image":
        threshold = np.quantile(ratio.reshape(len(ratio), -1), quantile, axis=1)[:, None, None, None]
    else:
        threshold = np.quantile(ratio, quantile)
    mask = ratio > threshold
    if dilation:
        mask = np.stack([ndimage.binary_dilation(m[0], structure=np.ones((3, 3)), iterations=dilation)[None]
                         for m in mask])
    return mask.astype(np.float32)


@pytest.mark.parametrize(("scope", "dilation", "percentile"), [("image", 1, 95.0), ("batch", 2, 90.0),
                                                                ("image", 0, 99.0)])
def test_likely_anomaly_mask_matches_numpy_and_scipy(scope, dilation, percentile):
    rng = np.random.default_rng(4)
    residual = rng.gamma(2.0, 0.05, size=(3, 1, 20, 24)).astype(np.float32)
    residual[1] *= 3  # a brighter image: only the batch scope mixes the images
    residual[2, 0, :5, :5] = 0  # ties at zero do not matter
    mask = likely_anomaly_mask(torch.from_numpy(residual), percentile, 0.95, dilation, scope).numpy()
    np.testing.assert_array_equal(mask, _numpy_mask(residual, percentile, 0.95, dilation, scope))
    if dilation == 0 and scope == "image":  # ~5 % of each image is flagged
        assert np.allclose(mask.reshape(3, -1).mean(axis=1), 0.05, atol=0.01)


def test_repaint_leaves_pixels_outside_the_mask_untouched():
    torch.manual_seed(5)
    process = DiffusionProcess(sampler="ddim", inference_steps=50)
    denoiser = AnoDDPM(**TINY).unet.eval()
    known = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:9, 6:12] = 1
    calls = []
    counting = lambda x, t: calls.append(int(t[0])) or denoiser(x, t)  # noqa: E731
    with torch.no_grad():
        result = repaint(process, counting, known, mask, torch.rand(2, 1, 16, 16), 60, resamples=3)
    outside = mask == 0
    assert torch.equal(result[outside], known[outside])
    assert not torch.allclose(result[~outside], known[~outside], atol=1e-3)
    assert calls == [60] * 3 + [40] * 3 + [20] * 3 + [0]  # 3 rounds per step; one for the step to the clean image


def _trained_checkpoint(tmp_path, size: int = 16) -> str:
    import pytorch_lightning as pl

    model = AnoDDPM(**{**TINY, "image_size": size}, sampler="ddim", inference_steps=10)
    loader = torch.utils.data.DataLoader([{"image": torch.rand(1, size, size)} for _ in range(8)], batch_size=4)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, loader)
    path = tmp_path / "anoddpm.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def _reconstruction_and_output(auto: AutoDDPM, image: Tensor, seed: int):
    """AutoDDPM's first-stage reconstruction (t_recon 100) and its output, drawn from the same noise."""
    with torch.no_grad():
        torch.manual_seed(seed)
        reconstruction = auto.diffusion.reconstruct(image, 100)
        torch.manual_seed(seed)
        return reconstruction, auto.predict_anomaly(image)


def test_autoddpm_inpaints_only_its_mask_and_multiplies_the_two_residuals(tmp_path):
    auto = AutoDDPM(image_size=16, t_recon=100, t_inpaint=20, resamples=2)
    with pytest.raises(RuntimeError, match="load_pretrained"):
        auto.predict_anomaly(torch.rand(1, 1, 16, 16))
    auto.load_pretrained(_trained_checkpoint(tmp_path))
    assert AutoDDPM.weights_from(auto.hparams) == "anoddpm" and auto.num_parameters() > 0
    image = torch.rand(3, 1, 16, 16)
    reconstruction, output = _reconstruction_and_output(auto, image, seed=7)
    residual = (image - reconstruction).abs()
    mask = likely_anomaly_mask(residual)
    outside = mask == 0
    assert torch.equal(output.reconstruction[outside], image[outside])
    assert torch.all(output.anomaly_map[outside] == 0)
    expected = residual * (image - output.reconstruction).abs()
    torch.testing.assert_close(output.anomaly_map, expected)
    torch.testing.assert_close(output.anomaly_score, expected.flatten(1).mean(1))


def test_autoddpm_checks_the_upstream_checkpoint(tmp_path):
    checkpoint = _trained_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="16 px"):
        AutoDDPM(image_size=32).load_pretrained(checkpoint)
    with pytest.raises(ValueError, match="noise level"):
        AutoDDPM(image_size=16, t_recon=2000).load_pretrained(checkpoint)
    auto = AutoDDPM(image_size=16, sampler="ddim", inference_steps=5)
    auto.load_pretrained(checkpoint)
    assert auto.diffusion.process.stride == 200


def test_autoddpm_uses_the_lpips_saliency_when_its_weights_are_local(tmp_path, monkeypatch):
    from benchmark.metrics.perceptual import LPIPS
    from lightning_modules.nets.smoothing import gaussian_kernel, smooth

    torch.manual_seed(8)
    network = LPIPS("squeeze")
    state = {k: (v.abs() if k.startswith("lin") else v) for k, v in network.state_dict().items()}
    torch.save(state, tmp_path / "lpips_squeeze.pth")
    monkeypatch.setenv("NORMBENCH_LPIPS_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="too small"):
        AutoDDPM(image_size=16).load_pretrained(_trained_checkpoint(tmp_path))
    auto = AutoDDPM(image_size=32, t_recon=100, t_inpaint=20, resamples=2)
    auto.load_pretrained(_trained_checkpoint(tmp_path, 32))
    assert auto.saliency is not None
    image = torch.rand(2, 1, 32, 32)
    reconstruction, output = _reconstruction_and_output(auto, image, seed=9)
    with torch.no_grad():
        saliency = auto.saliency(image, reconstruction, normalize=True, spatial=True)
    residual = (image - reconstruction).abs()
    mask = likely_anomaly_mask(residual, saliency=saliency)
    assert not torch.equal(mask, likely_anomaly_mask(residual))  # the saliency changes which pixels are masked
    outside = mask == 0
    assert torch.equal(output.reconstruction[outside], image[outside])
    expected = residual * smooth(saliency, gaussian_kernel(17, 2.0)) * (image - output.reconstruction).abs()
    torch.testing.assert_close(output.anomaly_map, expected)
    monkeypatch.delenv("NORMBENCH_LPIPS_DIR")
    without = AutoDDPM(image_size=32)
    with pytest.warns(UserWarning, match="NORMBENCH_LPIPS_DIR"):
        without.load_pretrained(_trained_checkpoint(tmp_path, 32))
    assert without.saliency is None
