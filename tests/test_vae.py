"""The VAE of Zimmerer et al.: closed forms, input gradients against finite differences, score maps, harness."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_modules.nets.smoothing import gaussian_kernel, smooth
from lightning_modules.nets.vae import ConvVAENet, conv_vae_channels, gaussian_kl, gaussian_nll
from lightning_modules.vae import SCORES, VariationalAutoEncoder, minmax


def tiny_vae(**kwargs) -> VariationalAutoEncoder:
    """A 16 px convolutional VAE (levels 2-4, z = 3) in float64, for exact gradient checks."""
    torch.manual_seed(0)
    options = {"image_size": 16, "channels": [2, 4], "z_dim": 3, **kwargs}
    return VariationalAutoEncoder(**options).double().eval()


def test_kl_matches_torch_distributions():
    torch.manual_seed(1)
    mu, log_std = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    reference = kl_divergence(Normal(mu, log_std.exp()), Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, log_std), reference)
    assert gaussian_kl(torch.zeros(1, 5), torch.zeros(1, 5)).item() == 0.0  # posterior = prior
    assert gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4)).item() == pytest.approx(2.0)  # 4 * mu^2 / 2


@pytest.mark.parametrize("log_std", [0.0, -1.5, 0.7])
def test_nll_matches_torch_distributions(log_std):
    torch.manual_seed(2)
    x, mean = torch.rand(3, 1, 5, 5, dtype=torch.float64), torch.rand(3, 1, 5, 5, dtype=torch.float64)
    reference = -Normal(mean, math.exp(log_std)).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x, mean, log_std), reference)
    constant = log_std + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_nll(x, mean, log_std, constant=False), reference - constant)


def test_smoothing_kernel_size_sum_and_shape():
    kernel = gaussian_kernel(7, 3.0, torch.float64)
    assert kernel.shape == (7, 7)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    i, j = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    unnormalised = torch.exp(-((i - 3) ** 2 + (j - 3) ** 2) / (2 * 9.0)).double()
    torch.testing.assert_close(kernel, unnormalised / unnormalised.sum())
    delta = torch.zeros(1, 1, 11, 11, dtype=torch.float64)
    delta[0, 0, 5, 5] = 1.0
    torch.testing.assert_close(smooth(delta, kernel)[0, 0, 2:9, 2:9], kernel)  # the impulse response
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(8, 3.0)


def test_architecture_sizes():
    assert conv_vae_channels(64) == (16, 32, 64, 256)
    assert conv_vae_channels(128) == (16, 32, 64, 256, 256)
    for size in (64, 128):
        net = ConvVAENet(1, size)
        mu, log_std = net.encode(torch.rand(2, 1, size, size))
        assert mu.shape == log_std.shape == (2, 256)
        assert net.decode(mu).shape == (2, 1, size, size)
        assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d))
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    with pytest.raises(ValueError, match="image_size"):
        conv_vae_channels(48)


def _per_sample_terms(model: VariationalAutoEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, kl, rec, _ = model.terms(x, sample=False)
    return kl, rec


def test_input_gradients_match_finite_differences():
    model = tiny_vae()
    torch.manual_seed(3)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    parts = model.input_gradients(x)
    assert parts["grad_kl"].abs().sum() > 0 and parts["grad_rec"].abs().sum() > 0
    h = 1e-6
    for b, i, j in [(0, 3, 4), (0, 8, 8), (1, 15, 0), (1, 10, 12)]:
        plus, minus = x.clone(), x.clone()
        plus[b, 0, i, j] += h
        minus[b, 0, i, j] -= h
        with torch.no_grad():
            (kl_p, rec_p), (kl_m, rec_m) = _per_sample_terms(model, plus), _per_sample_terms(model, minus)
        assert parts["grad_kl"][b, 0, i, j].item() == pytest.approx(((kl_p - kl_m)[b] / (2 * h)).item(), rel=1e-5,
                                                                     abs=1e-9)
        assert parts["grad_rec"][b, 0, i, j].item() == pytest.approx(((rec_p - rec_m)[b] / (2 * h)).item(), rel=1e-5,
                                                                      abs=1e-9)
        # per-sample terms: the other image's terms do not move
        other = 1 - b
        assert (kl_p - kl_m)[other].abs().item() < 1e-12


def test_score_maps_and_slice_scores_against_independent_computation():
    log_std = -0.3
    model = tiny_vae(log_std=log_std)
    torch.manual_seed(4)
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    output = model._predict({"image": x})
    assert list(output.variants) == list(model.score_variants) == list(SCORES)
    # independent pieces: torch.distributions for the likelihood, autograd of the summed terms for gradients
    with torch.no_grad():
        mu, _ = model.net.encode(x)
        mean = model.net.decode(mu)
    nll = -Normal(mean, math.exp(log_std)).log_prob(x)
    parts = model.input_gradients(x)
    kernel = gaussian_kernel(7, 3.0, torch.float64)
    maps = {name: m for name, (m, _) in output.variants.items()}
    scores = {name: s for name, (_, s) in output.variants.items()}
    constant = log_std + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(maps["rec"], nll - constant)
    torch.testing.assert_close(maps["grad_kl"], smooth(parts["grad_kl"].abs(), kernel))
    torch.testing.assert_close(maps["grad_rec"], smooth(parts["grad_rec"].abs(), kernel))
    torch.testing.assert_close(maps["grad_elbo"], smooth((parts["grad_kl"] + parts["grad_rec"]).abs(), kernel))
    g = parts["grad_kl"].abs()
    torch.testing.assert_close(maps["combi"], smooth((g - g.min()) / (g.max() - g.min()), kernel) * nll)
    rec = nll.flatten(1).sum(1)
    torch.testing.assert_close(scores["rec"], rec)
    torch.testing.assert_close(scores["grad_rec"], rec)
    torch.testing.assert_close(scores["grad_kl"], parts["kl"])
    torch.testing.assert_close(scores["grad_elbo"], parts["kl"] + rec)
    torch.testing.assert_close(scores["combi"], parts["kl"] + rec)
    assert torch.equal(output.anomaly_map, maps["combi"])  # the first score is the primary
    for name in ("grad_kl", "combi"):
        assert maps[name].abs().sum() > 0


def test_combi_normalisation_batch_versus_image():
    torch.manual_seed(5)
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    for mode, depends_on_batch in (("batch", True), ("image", False)):
        model = tiny_vae(scores=["combi"], combi_normalisation=mode)
        alone = model._predict({"image": x[:1]}).anomaly_map
        together = model._predict({"image": x}).anomaly_map[:1]
        assert (not torch.allclose(alone, together)) is depends_on_batch


def test_combi_stays_non_negative_with_small_likelihood_std():
    model = tiny_vae(log_std=-3.0, scores=["combi", "rec"])
    output = model._predict({"image": torch.rand(2, 1, 16, 16, dtype=torch.float64)})
    assert all(bool((m >= 0).all()) for m, _ in output.variants.values())


def test_minmax():
    values = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 5.0]]]])
    torch.testing.assert_close(minmax(values, per_image=False), torch.tensor([[[[0.0, 0.5]]], [[[1.0, 1.0]]]]))
    torch.testing.assert_close(minmax(values, per_image=True), torch.tensor([[[[0.0, 1.0]]], [[[0.0, 0.0]]]]))


def test_gradient_maps_refuse_inference_mode_with_a_clear_error():
    model = tiny_vae()
    assert model.needs_input_gradients and not tiny_vae(scores=["rec"]).needs_input_gradients
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        model._predict({"image": torch.rand(1, 1, 16, 16, dtype=torch.float64)})


def test_mlp_repeats_sum_the_likelihood_of_the_copies():
    torch.manual_seed(6)
    model = VariationalAutoEncoder(image_size=8, architecture="mlp", z_dim=2, hidden=5, input_repeats=3).eval()
    x = torch.rand(2, 1, 8, 8)
    _, _, rec, excess = model.terms(x, sample=False)
    with torch.no_grad():
        mean = model.net.decode(model.net.encode(x)[0])  # [2, 3, 8, 8]
    reference = -Normal(mean, 1.0).log_prob(x.repeat(1, 3, 1, 1))
    torch.testing.assert_close(rec, reference.flatten(1).sum(1))
    torch.testing.assert_close(excess, (reference - 0.5 * math.log(2 * math.pi)).sum(1, keepdim=True))


def test_bad_arguments():
    with pytest.raises(ValueError, match="scores"):
        VariationalAutoEncoder(image_size=16, channels=[2, 4], scores=["kl"])
    with pytest.raises(ValueError, match="architecture"):
        VariationalAutoEncoder(image_size=16, architecture="resnet")
    with pytest.raises(ValueError, match="levels"):
        VariationalAutoEncoder(image_size=32, channels=[2, 4])


def test_brain_config_likelihood_is_one_data_std(tiny_sweep_setup):
    """The conv VAE's likelihood sigma must be one std of brain intensities, as in the original (sigma 1 on data
    z-scored per volume). The literal log_std 0 on [0, 1] data (sigma five data stds) let the KL term dominate and
    put every map of the conv VAE below chance on the synthetic tumours (docs/validation.md)."""
    import numpy as np
    import yaml

    from benchmark.config import load_component

    root = tiny_sweep_setup["root"]
    datamodule = load_component("datasets", "synthetic_brain").instantiate(
        data_root=str(root / "data"), progress=False,
        **{k: v for k, v in yaml.safe_load(tiny_sweep_setup["dataset"].read_text())["init_args"].items()
           if k != "data_root"})
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = datamodule.splits.train
    brain = np.asarray(train.images)[np.asarray(train.rois) > 0.5]
    configured = load_component("methods", "vae").init_args["log_std"]
    assert abs(configured - math.log(brain.std())) < 0.35, (configured, math.log(brain.std()))
