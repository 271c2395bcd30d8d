"""Configs: the shipped files, overrides from the command line, and clear errors."""

import pytest

from stbp import PAPER_NETWORKS
from stbp.cli import build_parser
from stbp.commands import resolve_config
from stbp.config import (
    DEFAULTS,
    ConfigError,
    config_names,
    load_config,
    merge,
    to_toml,
    tomllib,
    validate,
)

EXPERIMENTS = {"demo", "demo-deep", "nmnist", "nmnist-emulated", "dvs-cifar10",
               "cifar10-small", "cifar10-middle", "cifarnet"}  # fmt: skip


def test_every_experiment_of_the_paper_has_a_config():
    assert EXPERIMENTS <= set(config_names())


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_shipped_configs_load_and_name_a_known_network(name):
    config = load_config(name)
    assert config["run"]["name"] == name
    assert config["run"]["description"]
    assert config["model"]["spec"] or config["model"]["network"] in PAPER_NETWORKS


def test_demo_starts_from_the_agreed_settings():
    config = load_config("demo")
    assert config["model"]["network"] == "mnist-demo"
    assert (config["data"]["T"], config["optim"]["batch_size"], config["run"]["epochs"]) == (
        6,
        50,
        15,
    )
    assert (config["optim"]["optimizer"], config["optim"]["schedule"]) == ("adam", "cosine")
    assert (config["data"]["augment_shift"], config["model"]["dropout"]) == (2, 0.3)


def test_unknown_name_lists_the_configs():
    with pytest.raises(ConfigError, match="unknown config 'nope'.*demo"):
        load_config("nope")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_config(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    "text, words",
    [
        ("[optim]\nlr = 'fast'\n", "lr = 'fast' should be float"),
        ("[optim]\nlearning_rate = 1.0\n", "unknown key 'learning_rate' in \\[optim\\]"),
        ("[training]\nepochs = 1\n", "unknown table \\[training\\]"),
        ("[optim]\nschedule = 'linear'\n", "schedule = 'linear'; choose one of"),
        ("[run\nepochs = 1\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as info:
        load_config(str(path))
    assert "bad.toml" in str(info.value)


def test_command_line_flags_override_the_file():
    args = build_parser().parse_args(
        ["train", "--config", "demo", "--epochs", "3", "--T", "4", "--batch-size", "20",
         "--neunorm", "--precision", "bf16", "--seed", "7", "--data-dir", "/x"]
    )  # fmt: skip
    config = resolve_config(args)
    assert config["run"]["epochs"] == 3 and config["data"]["T"] == 4
    assert config["optim"]["batch_size"] == 20 and config["model"]["neunorm"] is True
    assert config["run"]["precision"] == "bf16" and config["run"]["seed"] == 7
    assert config["data"]["dir"] == "/x"
    assert config["optim"]["lr"] == load_config("demo")["optim"]["lr"]  # untouched


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config("nmnist-emulated")
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    assert tomllib.loads(path.read_text()) == config
    assert load_config(str(path)) == config


def test_merge_does_not_modify_the_defaults():
    base = {"run": {"epochs": 1}}
    merged = merge(base, {"run": {"epochs": 5}})
    assert base["run"]["epochs"] == 1 and merged["run"]["epochs"] == 5


@pytest.mark.parametrize("dataset", ["cifar10", "nmnist"])
def test_spike_encodings_need_images_in_0_1(dataset):
    config = merge(DEFAULTS, {"data": {"dataset": dataset, "encoding": "bernoulli"}})
    with pytest.raises(ConfigError, match="needs static images with intensities in \\[0, 1\\]"):
        validate(config)
