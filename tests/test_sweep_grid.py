"""Grid entries in sweeps: one config under several argument values, each variant named and validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.config import ConfigError
from benchmark.sweep import build_sweep, expand_entry, format_value, load_sweep, variant_name

SOURCE = "grid.yaml"


def _names(kind: str, entry) -> list[str]:
    return [config.name for config in expand_entry(kind, entry, SOURCE)]


def _sweep(methods: list, datasets: list | None = None, overrides: tuple[str, ...] = (), **extra):
    data = {"methods": methods, "datasets": datasets or ["synthetic_brain"], "seeds": [0], **extra}
    return build_sweep("grid", data, list(overrides), SOURCE)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "grid_sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_product_in_key_order_with_scalars_on_every_variant():
    variants = expand_entry("methods", {"ae": {"lr": [0.001, 0.01], "loss": "l2", "dropout": [0.0, 0.5]}}, SOURCE)
    assert [v.name for v in variants] == ["ae@lr=0.001,dropout=0.0", "ae@lr=0.001,dropout=0.5",
                                          "ae@lr=0.01,dropout=0.0", "ae@lr=0.01,dropout=0.5"]
    assert [(v.init_args["lr"], v.init_args["dropout"]) for v in variants] == [
        (0.001, 0.0), (0.001, 0.5), (0.01, 0.0), (0.01, 0.5)]
    assert all(v.init_args["loss"] == "l2" and v.init_args["base_channels"] == 16 for v in variants)  # file values kept
    assert all(v.source.startswith(f"grid.yaml: methods grid entry '{v.name}'") for v in variants)
    assert [v.name for v in expand_entry("datasets", {"synthetic_brain": {"seed": [0, 1, 2]}}, SOURCE)] == [
        "synthetic_brain@seed=0", "synthetic_brain@seed=1", "synthetic_brain@seed=2"]


def test_scalar_only_mapping_is_one_variant_named_by_every_key():
    (variant,) = expand_entry("methods", {"ae": {"lr": 0.001, "faithful_batchnorm": False}}, SOURCE)
    assert variant.name == "ae@lr=0.001,faithful_batchnorm=false"
    assert variant.init_args["lr"] == 0.001 and variant.init_args["faithful_batchnorm"] is False
    assert _names("methods", {"intensity": {"polarity": "hypo"}}) == ["intensity@polarity=hypo"]
    assert _names("methods", "ae") == ["ae"]


def test_list_of_lists_is_one_list_valued_argument():
    (variant,) = expand_entry("methods", {"ae": {"betas": [[0.5, 0.9]]}}, SOURCE)
    assert variant.name == "ae@betas=[0.5,0.9]" and variant.init_args["betas"] == [0.5, 0.9]
    assert _names("datasets", {"synthetic_brain": {"slice_range": [[0.2, 0.8], None]}}) == [
        "synthetic_brain@slice_range=[0.2,0.8]", "synthetic_brain@slice_range=null"]
    with pytest.raises(ConfigError, match=r"betas = 0\.5 does not match.*list of lists"):
        expand_entry("methods", {"ae": {"betas": [0.5, 0.9]}}, SOURCE)  # two variants with a float each


def test_value_formatting():
    assert [format_value(v) for v in (3, -1.0, 1e-05, True, False, None, "l1", [0.5, 0.999], {"a": 1})] == [
        "3", "-1.0", "1e-05", "true", "false", "null", "l1", "[0.5,0.999]", "{a:1}"]
    assert variant_name("digits", {"held_out_class": 3}) == "digits@held_out_class=3"


def test_unknown_argument_names_the_sweep_file_and_key(tmp_path):
    path = _write(tmp_path, {"methods": [{"ae": {"learning_rate": [0.1, 0.2]}}], "datasets": ["synthetic_brain"]})
    with pytest.raises(ConfigError, match=r"grid_sweep\.yaml: .*unknown key init_args\.learning_rate .*valid keys"):
        load_sweep(str(path))
    path = _write(tmp_path, {"methods": ["ae"], "datasets": [{"synthetic_brain": {"n_train": ["many"]}}]})
    with pytest.raises(ConfigError, match=r"grid_sweep\.yaml: .*init_args\.n_train = 'many' does not match"):
        load_sweep(str(path))


def test_names_must_be_folder_names():
    for value in ("a/b", "a b", "a\\b", "a\0b", "tab\there"):
        with pytest.raises(ConfigError, match=r"grid\.yaml: datasets entry 'synthetic_brain': data_root = .* "
                                              r"separate config file"):
            expand_entry("datasets", {"synthetic_brain": {"data_root": [value]}}, SOURCE)
    with pytest.raises(ConfigError, match=r"lesion_kinds = \['tumor', 'a b'\] .*separate config file"):
        expand_entry("datasets", {"synthetic_brain": {"lesion_kinds": [["tumor", "a b"]], "seed": 1}}, SOURCE)
    assert _names("datasets", {"synthetic_brain": {"lesion_kinds": [["tumor", "stroke"]]}}) == [
        "synthetic_brain@lesion_kinds=[tumor,stroke]"]  # lists are rendered without spaces
    # a scalar beside a grid key is not part of the name, so it may hold a path
    (variant,) = expand_entry("datasets", {"synthetic_brain": {"data_root": "/tmp/x y", "seed": [1]}}, SOURCE)
    assert variant.name == "synthetic_brain@seed=1" and variant.init_args["data_root"] == "/tmp/x y"


def test_malformed_entries():
    for entry, message in [({"ae": None, "lr": [0.1]}, r"exactly one key .*\['ae', 'lr'\]; indent"),
                           ({"ae": [0.1]}, r"must be a non-empty mapping"), ({"ae": {}}, r"non-empty mapping"),
                           ({"ae": {"lr": []}}, r"lr: an empty list gives no variant"),
                           (["ae"], r"expected a config name or a mapping")]:
        with pytest.raises(ConfigError, match=message):
            expand_entry("methods", entry, SOURCE)
    with pytest.raises(ConfigError, match=r"unknown method 'nope'"):
        expand_entry("methods", {"nope": {"lr": [1.0]}}, SOURCE)


def test_duplicate_names_are_rejected():
    for methods in (["ae", "ae"], [{"ae": {"lr": [0.1, 0.2]}}, {"ae": {"lr": [0.2]}}],
                    [{"ae": {"lr": [0.1], "loss": "l1"}}, {"ae": {"lr": [0.1], "loss": "l2"}}]):
        with pytest.raises(ConfigError, match=r"grid\.yaml: methods: 'ae(@lr=0\.[12])?' appears twice"):
            _sweep(methods)
    assert [job.method.name for job in _sweep(["ae", {"ae": {"lr": 0.1}}]).jobs] == ["ae", "ae@lr=0.1"]


def test_overrides_by_base_name_and_by_variant_name():
    sweep = _sweep(["random", "ae", {"ae": {"lr": [0.1, 0.2]}}],
                   overrides=("methods.ae.loss=l2", "methods.ae@lr=0.1.dropout=0.5", "methods.ae@lr=0.2.lr=0.3",
                              "methods.random.seed=7"))
    methods = {job.method.name: job.method for job in sweep.jobs}
    assert list(methods) == ["random", "ae", "ae@lr=0.1", "ae@lr=0.2"]
    assert all(methods[name].init_args["loss"] == "l2" for name in ("ae", "ae@lr=0.1", "ae@lr=0.2"))
    assert methods["ae@lr=0.1"].init_args["dropout"] == 0.5 and methods["ae"].init_args["dropout"] == 0.2
    assert methods["ae@lr=0.2"].init_args["lr"] == 0.3  # the override replaces the grid value; the name stays
    assert methods["ae@lr=0.1"].init_args["lr"] == 0.1 and methods["random"].init_args["seed"] == 7
    assert "override 'methods.ae.loss=l2'" in methods["ae@lr=0.1"].source
    dataset = _sweep(["random"], [{"synthetic_brain": {"seed": [0, 1]}}],
                     overrides=("datasets.synthetic_brain.n_train=3", "datasets.synthetic_brain@seed=1.n_val=2"))
    datasets = {job.dataset.name: job.dataset.init_args for job in dataset.jobs}
    assert datasets["synthetic_brain@seed=0"]["n_train"] == 3 and datasets["synthetic_brain@seed=1"]["n_train"] == 3
    assert datasets["synthetic_brain@seed=0"]["n_val"] == 4 and datasets["synthetic_brain@seed=1"]["n_val"] == 2


def test_override_errors_list_the_names():
    methods = ["random", {"ae": {"lr": [0.1, 0.2]}}]
    with pytest.raises(ConfigError, match=r"'ae@lr=0\.3' is not one of this sweep's methods: "
                                          r"\['random', 'ae@lr=0\.1', 'ae@lr=0\.2'\] \(or a config name: \['ae'\]\)"):
        _sweep(methods, overrides=("methods.ae@lr=0.3.lr=1.0",))
    with pytest.raises(ConfigError, match=r"'vae' is not one of this sweep's methods"):
        _sweep(methods, overrides=("methods.vae.lr=1",))
    with pytest.raises(ConfigError, match=r"override 'methods\.ae@lr=0\.1\.learning_rate=1'.*unknown key "
                                          r"init_args\.learning_rate"):
        _sweep(methods, overrides=("methods.ae@lr=0.1.learning_rate=1",))
    with pytest.raises(ConfigError, match=r"no argument given"):
        _sweep(methods, overrides=("methods.ae=1",))


def test_build_sweep_jobs_and_run_folders(tmp_path):
    sweep = _sweep(["random", {"ae": {"lr": [0.1, 0.2]}}], ["synthetic_brain", {"synthetic_brain": {"seed": [1, 2]}}],
                   seeds=[0, 1])
    assert len(sweep.jobs) == 3 * 3 * 2
    folders = {job.run_dir(tmp_path, "grid").relative_to(tmp_path / "grid" / "runs").as_posix() for job in sweep.jobs}
    assert len(folders) == len(sweep.jobs)
    assert "synthetic_brain@seed=2/ae@lr=0.1/seed_1" in folders and "synthetic_brain/random/seed_0" in folders
    assert [(job.dataset.name, job.method.name, job.seed) for job in sweep.jobs[:4]] == [
        ("synthetic_brain", "random", 0), ("synthetic_brain", "random", 1), ("synthetic_brain", "ae@lr=0.1", 0),
        ("synthetic_brain", "ae@lr=0.1", 1)]


def test_command_line_entries_accept_the_mapping_syntax(tmp_path):
    path = _write(tmp_path, {"methods": ["random"], "datasets": ["synthetic_brain"], "seeds": [0]})
    sweep = load_sweep(str(path), ["datasets=[synthetic_brain, {synthetic_brain: {seed: [3, 4]}}]",
                                   "methods=[intensity, {intensity: {polarity: [hyper, hypo]}}]",
                                   "datasets.synthetic_brain@seed=4.n_train=5"])
    assert sorted({job.dataset.name for job in sweep.jobs}) == [
        "synthetic_brain", "synthetic_brain@seed=3", "synthetic_brain@seed=4"]
    assert [job.method.name for job in sweep.jobs[:3]] == [
        "intensity", "intensity@polarity=hyper", "intensity@polarity=hypo"]
    assert {job.dataset.name: job.dataset.init_args["n_train"] for job in sweep.jobs} == {
        "synthetic_brain": 16, "synthetic_brain@seed=3": 16, "synthetic_brain@seed=4": 5}


def test_exclude_leaves_pairs_out_and_names_typos():
    sweep = _sweep(["ae", {"vae_mlp": {"lr": [0.001, 0.01]}}, "random"], ["synthetic_brain", "digits"],
                   exclude=[{"method": "ae", "dataset": "digits"}, {"method": "vae_mlp@lr=0.01"},
                            {"dataset": "synthetic_brain", "method": "random"}])
    pairs = [(job.method.name, job.dataset.name) for job in sweep.jobs]
    assert pairs == [("ae", "synthetic_brain"), ("vae_mlp@lr=0.001", "synthetic_brain"),
                     ("vae_mlp@lr=0.001", "digits"), ("random", "digits")]
    with pytest.raises(ConfigError, match="no method 'aee'"):
        _sweep(["ae"], exclude=[{"method": "aee"}])
    # a registered method that the grid does not hold (a methods=[...] override narrowed it) excludes nothing
    assert [job.method.name for job in _sweep(["ae"], exclude=[{"method": "ascnet", "dataset": "digits"}]).jobs] \
        == ["ae"]
    with pytest.raises(ConfigError, match="keys method and / or dataset"):
        _sweep(["ae"], exclude=[{"methods": "ae"}])
    assert [j.dataset.name for j in _sweep(["vae_mlp"], ["digits", "synthetic_brain"],
                                           exclude=[{"method": "vae_mlp", "dataset": "digits"}]).jobs] == [
        "synthetic_brain"]


def test_default_sweep_runs_a_subset_of_its_methods():
    """README: `methods=[...]` runs a subset of the default sweep, whose exclude list names methods left out."""
    sweep = load_sweep("default", ["methods=[random,ae]", "datasets=[synthetic_brain]"])
    assert [(job.method.name, job.dataset.name) for job in sweep.jobs] == [
        ("random", "synthetic_brain"), ("ae", "synthetic_brain")]
