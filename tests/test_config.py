"""Configuration errors are reported with the file and key, before anything runs."""

from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.config import (
    ComponentConfig,
    ConfigError,
    TrainerProfile,
    available,
    load_component,
    load_evaluation,
    matches_annotation,
)


def test_registered_configs_load():
    for kind in ("methods", "datasets"):
        for name in available(kind):
            config = load_component(kind, name)
            assert config.name == name
    assert {"ae", "random", "intensity"} <= set(available("methods"))
    assert "synthetic_brain" in available("datasets")


def test_unknown_method_and_dataset_names(capsys):
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; available: .*ae"):
        load_component("methods", "nope")
    assert main(["run", "--method", "nope", "--dataset", "synthetic_brain"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["run", "--method", "ae", "--dataset", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_unknown_init_arg_names_file_and_key(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("class_path: lightning_modules.ae.AutoEncoder\ninit_args:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: unknown key init_args\.learning_rate .*valid keys: .*lr"):
        ComponentConfig.from_file(path)


def test_wrong_type_names_file_and_key(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("class_path: lightning_modules.ae.AutoEncoder\ninit_args:\n  dropout: high\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: init_args\.dropout = 'high' does not match"):
        ComponentConfig.from_file(path)
    path.write_text("class_path: lightning_modules.ae.AutoEncoder\ninit_args:\n  loss: l3\n")
    with pytest.raises(ConfigError, match=r"init_args\.loss = 'l3'"):
        ComponentConfig.from_file(path)


def test_bad_class_path_and_top_level_keys(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("class_path: lightning_modules.nothing.Here\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: cannot import module 'lightning_modules\.nothing'"):
        ComponentConfig.from_file(path)
    path.write_text("class_path: lightning_modules.ae.AutoEncoder\nargs: {}\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['args'\]"):
        ComponentConfig.from_file(path)


def test_trainer_profile_validation(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("trainer:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: unknown key trainer\.max_epoch"):
        TrainerProfile.from_file(path)
    path.write_text("trainer:\n  max_epochs: 3\npatience: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['patience'\]"):
        TrainerProfile.from_file(path)


def test_evaluation_profiles_load_and_are_validated(tmp_path):
    assert {"default", "baur"} <= set(available("evaluation"))
    assert load_evaluation("default").postprocessing.is_identity
    baur = load_evaluation("baur").postprocessing
    assert (baur.median_size, baur.roi_erosion_iterations, baur.min_component_size) == (5, 12, 8)
    path = tmp_path / "e.yaml"
    for text, message in [
        ("fpr_target: [0.05]\n", r"e\.yaml: unknown key\(s\) \['fpr_target'\]; valid keys: fpr_targets"),
        ("fpr_targets: [5]\n", r"e\.yaml: fpr_targets must be fractions in \(0, 1\)"),
        ("postprocessing: smooth\n", r"e\.yaml: unknown postprocessing profile 'smooth'"),
        ("postprocessing: {median: 3}\n", r"e\.yaml: postprocessing: unknown key\(s\) \['median'\]"),
        ("postprocessing: {median_size: -1}\n", r"postprocessing\.median_size must be a non-negative integer"),
        ("lesion_size_edges: [50, 10]\n", r"lesion_size_edges must be increasing"),
        ("sub_bins_per_octave: 1000\n", r"sub_bins_per_octave must be a power of two"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_evaluation(str(path))


@pytest.mark.parametrize(
    ("value", "annotation", "ok"),
    [(1, float, True), (True, int, False), ("a", int | None, False), (None, int | None, True),
     ([1, 2], tuple[float, float], True), ([1], tuple[float, float], False), ({"a": "b"}, dict[str, str], True)],
)
def test_annotation_checks(value, annotation, ok):
    assert matches_annotation(value, annotation) is ok
