"""Checkpoints: atomic writes, safe loads, clear errors for corrupt or foreign files."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

import stbp
from stbp import checkpoint as ck

SPEC = "4C3(Enc)-AP2-8FC-Voting"


def tiny_model(**kwargs):
    return stbp.build(SPEC, (1, 8, 8), T=2, **kwargs)


def save_tiny(path, model=None):
    model = model or tiny_model()
    ck.save_atomic({"model": model.state_dict(), "build_args": model.build_args}, path)
    return model


def test_save_then_load_model_gives_the_same_network(tmp_path):
    model = save_tiny(tmp_path / "a.pt")
    loaded = ck.load_model(tmp_path / "a.pt")
    assert loaded.build_args == model.build_args and not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_save_leaves_no_temporary_file_and_replaces_the_old_one(tmp_path):
    save_tiny(tmp_path / "last.pt")
    newer = save_tiny(tmp_path / "last.pt", tiny_model(neunorm=True))
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert ck.load_checkpoint(tmp_path / "last.pt")["build_args"] == newer.build_args


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    old = save_tiny(tmp_path / "last.pt")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_tiny(tmp_path / "last.pt", tiny_model(neunorm=True))
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert ck.load_checkpoint(tmp_path / "last.pt")["build_args"] == old.build_args


@pytest.mark.parametrize("cut", [0, 10, 200, -50])
def test_corrupt_files_name_the_file(tmp_path, cut):
    save_tiny(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[:cut] if cut else b"")
    with pytest.raises(ck.CheckpointError, match="bad.pt: not a readable checkpoint"):
        ck.load_checkpoint(tmp_path / "bad.pt")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ck.CheckpointError, match="nothing.pt does not exist"):
        ck.load_checkpoint(tmp_path / "nothing.pt")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_a_pickle_with_code_is_refused_not_run(tmp_path):
    torch.save({"format": ck.FORMAT, "x": Payload()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(ck.CheckpointError, match="evil.pt: not a readable checkpoint"):
        ck.load_checkpoint(tmp_path / "evil.pt")


def test_a_torch_file_that_is_not_ours_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ck.CheckpointError, match="other.pt: not an stbp checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")


def test_another_network_is_refused_with_the_difference(tmp_path):
    save_tiny(tmp_path / "last.pt")
    state = ck.load_checkpoint(tmp_path / "last.pt")
    other = stbp.build("4C3(Enc)-AP2-16FC-Voting", (1, 8, 8), T=2)
    with pytest.raises(ck.CheckpointError, match="last.pt holds a different network.*spec"):
        ck.check_same_network(state, other.build_args, tmp_path / "last.pt")
    with pytest.raises(ck.CheckpointError, match="last.pt: the weights do not fit"):
        ck.load_weights(other, state["model"], tmp_path / "last.pt")


def test_rng_states_round_trip_through_a_safe_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ck.save_atomic({"rng": ck.rng_states()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_states(ck.load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
