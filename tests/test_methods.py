"""Method contract, AE-S layout and the non-learned baselines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.ae import AutoEncoder, residual_map
from lightning_modules.baselines import IntensityBaseline, RandomBaseline


def _convs(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if type(m) is kind]


def test_ae_s_layout_at_128_matches_the_reference():
    ae = AutoEncoder(image_size=128)
    encoder = _convs(ae.encoder, nn.Conv2d)
    assert [c.out_channels for c in encoder] == [32, 64, 128, 128]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in encoder)
    decoder = _convs(ae.decoder, nn.ConvTranspose2d)
    assert [c.out_channels for c in decoder] == [128, 64, 32, 32]
    assert _convs(ae.decoder, nn.Conv2d)[-1].kernel_size == (1, 1)
    bn = _convs(ae, nn.BatchNorm2d)[0]
    assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)  # Keras defaults
    assert _convs(ae, nn.LeakyReLU)[0].negative_slope == pytest.approx(0.3)
    x = torch.rand(2, 1, 128, 128)
    assert ae.encoder(x).shape == (2, 128, 8, 8)  # spatial bottleneck
    assert ae(x).shape == x.shape


def test_ae_output_contract_and_loss():
    ae = AutoEncoder(image_size=32).eval()
    x = torch.rand(3, 1, 32, 32)
    out = ae.predict_anomaly(x)
    assert out.anomaly_map.shape == (3, 1, 32, 32) and out.anomaly_score.shape == (3,)
    torch.testing.assert_close(out.anomaly_map, (x - out.reconstruction).abs())
    torch.testing.assert_close(out.anomaly_score, out.anomaly_map.flatten(1).mean(1))
    expected = (x - out.reconstruction).abs().sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(ae.reconstruction_loss(x, out.reconstruction), expected)


def test_residual_kinds():
    x, r = torch.tensor([[[[0.2, 0.8]]]]), torch.tensor([[[[0.5, 0.5]]]])
    assert residual_map(x, r, "abs").flatten().tolist() == pytest.approx([0.3, 0.3])
    assert residual_map(x, r, "positive").flatten().tolist() == pytest.approx([0.0, 0.3])
    assert residual_map(x, r, "negative").flatten().tolist() == pytest.approx([0.3, 0.0])
    with pytest.raises(ValueError, match="unknown residual kind"):
        AutoEncoder(image_size=32, residual="squared")


def test_default_bottleneck_keeps_four_levels_at_any_size():
    ae = AutoEncoder(image_size=64, base_channels=16, max_channels=64)
    assert ae.encoder(torch.rand(1, 1, 64, 64)).shape == (1, 64, 4, 4)
    assert len(_convs(ae.encoder, nn.Conv2d)) == 4


def test_image_size_must_reach_the_bottleneck():
    with pytest.raises(ValueError, match="power of two"):
        AutoEncoder(image_size=48, bottleneck_resolution=8)


def test_random_baseline_is_reproducible_and_uniform():
    x = torch.rand(4, 1, 32, 32)
    a, b = RandomBaseline(seed=3).predict_anomaly(x), RandomBaseline(seed=3).predict_anomaly(x)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    assert 0.45 < float(a.anomaly_map.mean()) < 0.55 and float(a.anomaly_map.min()) >= 0
    assert not RandomBaseline.requires_training


def test_intensity_baseline_is_the_image():
    x = torch.rand(4, 1, 16, 16)
    out = IntensityBaseline().predict_anomaly(x)
    torch.testing.assert_close(out.anomaly_map, x)
    torch.testing.assert_close(out.anomaly_score, torch.quantile(x.flatten(1), 0.99, dim=1))
    torch.testing.assert_close(IntensityBaseline(polarity="hypo").predict_anomaly(x).anomaly_map, 1 - x)
