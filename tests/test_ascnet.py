"""ASC-Net: layouts, the disjointness Dice, phases that train only their network, resume, the run / sweep path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmark.cli import main
from lightning_modules.ascnet import AscNet, batch_dice, frozen_batchnorm_statistics, otsu_masks
from lightning_modules.nets.ascnet import AscNetDiscriminator, AscNetGenerator, ConvReluBN
from tests.conftest import TINY_DATA


@pytest.mark.parametrize("size", [64, 128, 160])
def test_layouts_and_shapes(size):
    generator, discriminator = AscNetGenerator(size, width=4), AscNetDiscriminator(size, width=4)
    cuts = generator(torch.rand(2, 1, size, size))
    assert all(t.shape == (2, 1, size, size) and t.min() > 0 and t.max() < 1 for t in cuts)
    assert discriminator(cuts.fc).shape == (2,)
    assert discriminator.output.in_features == 4 * 16 * (size // 16) ** 2  # 512 x 10 x 10 at 160 px, width 32
    for block in (m for m in generator.modules() if isinstance(m, ConvReluBN)):  # Conv -> ReLU -> BN, twice
        assert [type(layer) for layer in block] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d] * 2
        assert all(layer.momentum == 0.01 and layer.eps == 1e-3 for layer in block if isinstance(layer, nn.BatchNorm2d))
    # the I_fc decoder has no dropout after its last (full-size) concat; the I_wc decoder has
    assert [type(d) for d in generator.decoder_fc.dropouts] == [nn.Dropout] * 3 + [nn.Identity]
    assert [type(d) for d in generator.decoder_wc.dropouts] == [nn.Dropout] * 4
    assert generator.decoder_fc.ups[0].weight is not generator.decoder_wc.ups[0].weight  # separate weights
    assert generator.recombine.in_channels == 2 and generator.recombine.kernel_size == (1, 1)
    widths = [m.out_channels for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [4, 4, 8, 8, 16, 16, 32, 32, 64, 64]  # x 8 at the faithful width 32: ... 512, 512
    assert AscNetDiscriminator(160).output.in_features == 512 * 10 * 10


def test_sizes_not_divisible_by_16_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        AscNetGenerator(72)


def test_batch_dice_equals_a_hand_computation_and_its_gradient_separates_the_cuts():
    rng = np.random.default_rng(0)
    a_np, b_np = rng.random((3, 1, 4, 4)), rng.random((3, 1, 4, 4))
    intersection, total = (a_np * b_np).sum(), a_np.sum() + b_np.sum() + 1.0
    expected = (2 * intersection + 1.0) / total
    a = torch.tensor(a_np, requires_grad=True)
    dice = batch_dice(a, torch.tensor(b_np), smooth=1.0)
    assert dice.item() == pytest.approx(expected, rel=1e-6)
    dice.backward()
    analytic = (2 * b_np * total - (2 * intersection + 1.0)) / total**2  # d Dice / d a_i
    assert np.allclose(a.grad.numpy(), analytic, rtol=1e-5)
    step = torch.tensor(a_np) - 0.5 * a.grad  # descending the Dice lowers the overlap of the two cuts
    assert (step * torch.tensor(b_np)).sum() < intersection


def test_dice_variants_replace_entries_without_gradient():
    a = torch.tensor([0.0, 0.5, 1e-20, 0.9], requires_grad=True)
    b = torch.tensor([0.3, 0.0, 0.4, 0.9])
    batch_dice(a, b, replace="below").backward()
    assert a.grad[0] == 0 and a.grad[2] == 0 and a.grad[1] != 0  # replaced entries carry no gradient
    constant = batch_dice(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), replace="above")
    assert constant.item() == pytest.approx(1.0)  # stage 2's faithful Dice: every positive entry becomes 1


def test_frozen_batchnorm_keeps_running_statistics():
    norm = nn.BatchNorm2d(3).train()
    before = norm.running_mean.clone()
    with frozen_batchnorm_statistics(norm):
        out = norm(torch.randn(4, 3, 5, 5) + 3)
    assert torch.equal(norm.running_mean, before) and norm.momentum == 0.1
    assert out.mean().abs() < 1e-5  # normalised with the batch statistics


def test_otsu_masks_split_a_bimodal_foreground():
    maps = torch.full((1, 1, 8, 8), 0.2)
    maps[..., :3, :3] = 0.9
    foreground = torch.ones_like(maps)
    foreground[..., 7, :] = 0
    masks = otsu_masks(maps, foreground)
    assert masks[..., :3, :3].all() and masks.sum() == 9


# ---- phases in a Trainer --------------------------------------------------------------------------------------
class Images(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.images = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class TinyPools(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(Images(8, 0), batch_size=4)

    def unlabelled_dataloader(self) -> DataLoader:
        return DataLoader(Images(6, 1), batch_size=4)


class PhaseRecorder(pl.Callback):
    """Which networks changed (weights and BN buffers) in each iteration, by the stage it belonged to."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, bool, bool]] = []

    @staticmethod
    def _state(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stage = pl_module.stage
        self._g, self._d = self._state(pl_module.generator), self._state(pl_module.discriminator)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stage is None:
            return
        changed = [any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
                   for before, net in ((self._g, pl_module.generator), (self._d, pl_module.discriminator))]
        self.changes.append((self._stage, *changed))


def _model(**overrides) -> AscNet:
    args = dict(image_size=16, width=2, stage1_cycles=1, stage2_cycles=1, d_iterations=2, g_iterations=2, lr=1e-3)
    return AscNet(**{**args, **overrides})


def _trainer(**extra) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **extra)


def test_discriminator_trains_in_d_phases_and_stays_frozen_in_g_phases():
    torch.manual_seed(0)
    model, recorder = _model(), PhaseRecorder()
    _trainer(enable_checkpointing=False, callbacks=[recorder]).fit(model, datamodule=TinyPools())
    assert [stage for stage, *_ in recorder.changes] == (["stage1/cycle0/D"] * 2 + ["stage1/cycle0/G"] * 2
                                                         + ["stage2/cycle0/D"] * 2 + ["stage2/cycle0/G"] * 2)
    for stage, generator_changed, discriminator_changed in recorder.changes:
        if stage.endswith("/D"):
            assert discriminator_changed and not generator_changed, stage
        else:  # D's weights and running statistics untouched, G trained
            assert generator_changed and not discriminator_changed, stage


def test_resume_continues_mid_stage(tmp_path):
    torch.manual_seed(0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, monitor=None)
    first = _model(stage2_cycles=1, d_iterations=3, g_iterations=3)
    stopper = _StopAfter(4)  # two epochs of 2 batches: inside stage 1's G phase
    _trainer(callbacks=[checkpoints, stopper]).fit(first, datamodule=TinyPools())
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(state["state_dict"]["iteration"]) == 4 and first.stage_at(4) == "stage1/cycle0/G"
    resumed, recorder = _model(stage2_cycles=1, d_iterations=3, g_iterations=3), PhaseRecorder()
    _trainer(callbacks=[recorder], enable_checkpointing=False).fit(resumed, datamodule=TinyPools(),
                                                                   ckpt_path=str(tmp_path / "last.ckpt"))
    assert recorder.changes[0][0] == "stage1/cycle0/G" and len(recorder.changes) == 8
    assert int(resumed.iteration) == 12


class _StopAfter(pl.Callback):
    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(pl_module.iteration) >= self.iterations:
            trainer.should_stop = True


def test_ascnet_through_sweep_leaderboard_and_report(tmp_path):
    dataset = tmp_path / "tiny_brain.yaml"
    dataset.write_text(yaml.safe_dump({"class_path": "datamodules.synthetic_brain.SyntheticBrainDataModule",
                                       "init_args": {"data_root": str(tmp_path / "data"),
                                                     **{**TINY_DATA, "n_unlabelled": 2}}}))
    trainer = tmp_path / "cpu.yaml"
    trainer.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1,
                                                   "num_sanity_val_steps": 0, "log_every_n_steps": 1},
                                       "early_stopping_patience": None, "image_grid_every_n_epochs": 1}))
    sweep = tmp_path / "asc.yaml"
    sweep.write_text(yaml.safe_dump({"methods": ["ascnet"], "datasets": [str(dataset)], "seeds": [0],
                                     "trainer": str(trainer),
                                     "overrides": ["methods.ascnet.width=2", "methods.ascnet.d_iterations=2",
                                                   "methods.ascnet.g_iterations=2", "methods.ascnet.stage1_cycles=1",
                                                   "methods.ascnet.stage2_cycles=1"]}))
    results = tmp_path / "results"
    assert main(["sweep", "--config", str(sweep), "--results-dir", str(results), "--quiet"]) == 0
    run = results / "asc" / "runs" / "tiny_brain" / "ascnet" / "seed_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["variants"]) == ["ro", "wc", "ro_otsu"]
    assert int(torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)["state_dict"]["iteration"]) == 8
    board = (results / "asc" / "leaderboard.csv").read_text()
    assert all(f"ascnet[{v}],tiny_brain,tumor" in board for v in ("ro", "wc", "ro_otsu"))
    report = (results / "asc" / "report.md").read_text()
    assert "ascnet[ro]" in report and (run / "figures" / "qualitative_tumor[wc].png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "ascnet/stage1/cycle0/G/fc_wc_ro" in events.Tags()["images"]
    assert "ascnet/stage2/cycle0/D/I_ro" in events.Tags()["histograms"]


def test_ascnet_runs_on_the_original_npy_files(tmp_path):
    from tests.test_ascnet_npy import make_arrays, write_arrays

    write_arrays(tmp_path / "npy", make_arrays())
    code = main(["run", "--method", "ascnet", "--dataset", "ascnet_npy", "--results-dir", str(tmp_path / "results"),
                 "--quiet", f"datasets.ascnet_npy.root={tmp_path / 'npy'}", "datasets.ascnet_npy.batch_size=3",
                 "methods.ascnet.width=2", "methods.ascnet.d_iterations=1", "methods.ascnet.g_iterations=1",
                 "methods.ascnet.stage1_cycles=1", "methods.ascnet.stage2_cycles=1", "trainer.max_epochs=1"])
    assert code == 0
    metrics = json.loads((tmp_path / "results" / "adhoc" / "runs" / "ascnet_npy" / "ascnet" / "seed_0" /
                          "metrics.json").read_text())
    assert set(metrics["test_sets"]) == {"healthy", "input"}
    assert metrics["test_sets"]["input"]["pixel"]["n_lesion_pixels"] > 0


def test_maps_under_bf16_autocast():
    """bf16 mixed precision (the GPU profile, and --precision bf16-mixed on CPU): every map is float32 and finite
    (the Otsu map once failed converting a bf16 foreground to numpy)."""
    torch.manual_seed(0)
    model = AscNet(image_size=32, width=4).eval()
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.predict_anomaly(image)
    for name, (anomaly_map, score) in output.variants.items():
        assert anomaly_map.dtype == torch.float32 and torch.isfinite(anomaly_map).all(), name
        assert score.shape == (2,), name


def _separation(model: AscNet, reference: torch.Tensor, cuts: torch.Tensor) -> float:
    """How much higher (towards the cut label) the generator-phase discriminator scores cuts than references."""
    with torch.no_grad():
        return float(model.discriminate_cuts(cuts, reference).mean()
                     - model.discriminate_cuts(reference, reference).mean())


def test_generator_phase_discriminator_sees_what_it_learnt():
    """The discriminator learns on mixed batches (reference images and cuts together). In the generator phase it
    must still tell the two apart: scoring a batch of cuts alone with BatchNorm on that batch's own statistics (the
    faithful 'batch' mode) normalises the difference away and the generator gets no adversarial signal, which made
    ASC-Net's cuts collapse; the 'mixed' mode scores them beside reference images and keeps it."""
    torch.manual_seed(0)
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = (((yy - 16) ** 2 + (xx - 16) ** 2) < 100).float()[None, None]
    reference = (disk * 0.8 + 0.05 * torch.randn(16, 1, size, size)).clamp(0, 1)
    cuts = (disk * 0.3 + 0.05 * torch.randn(16, 1, size, size)).clamp(0, 1)  # a darker disk: easy to tell apart
    model = AscNet(image_size=size, width=4, generator_discriminator="mixed")
    optimiser = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    targets = torch.cat([torch.full((16,), -1.0), torch.full((16,), 1.0)])
    model.discriminator.train()
    for _ in range(60):  # the discriminator phase: one mixed batch per step
        loss = (model.discriminator(torch.cat([reference, cuts])) - targets).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    running = [m.running_mean.clone() for m in model.discriminator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert _separation(model, reference, cuts) > 1.0  # scores near -1 and +1
    model.hparams.generator_discriminator = "batch"
    assert abs(_separation(model, reference, cuts)) < 0.5
    after = [m.running_mean for m in model.discriminator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running, after, strict=True))  # frozen statistics
