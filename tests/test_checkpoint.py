"""Checkpoints: atomic writes, safe loads, clear errors for corrupt or foreign files."""

import os
import pickle
import random
import struct
import subprocess
import sys
import zipfile

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


# ------------------------------------------------------------------------- checksums


def flip_tensor_byte(path):
    """Flip one bit in the middle of the largest tensor record of a torch zip file (the
    pickle and the zip structure stay intact, so torch.load alone would not notice)."""
    with zipfile.ZipFile(path) as archive:
        record = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack(
        "<HH", data[record.header_offset + 26 : record.header_offset + 30]
    )
    start = record.header_offset + 30 + name_len + extra_len
    data[start + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_inside_a_tensor_is_refused(tmp_path):
    save_tiny(tmp_path / "best.pt")
    flip_tensor_byte(tmp_path / "best.pt")
    torch.load(tmp_path / "best.pt", weights_only=True)  # torch itself does not notice
    with pytest.raises(
        ck.CheckpointError, match=r"best.pt: checksum mismatch: the file is corrupt"
    ):
        ck.load_model(tmp_path / "best.pt")


def test_a_changed_plain_value_is_refused(tmp_path):
    model = tiny_model()
    ck.save_atomic(
        {"model": model.state_dict(), "build_args": model.build_args, "epoch": 3}, tmp_path / "a.pt"
    )
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    state["epoch"] = 4  # a tool that edits the file without knowing the checksum
    torch.save(state, tmp_path / "a.pt")
    with pytest.raises(ck.CheckpointError, match="a.pt: checksum mismatch"):
        ck.load_checkpoint(tmp_path / "a.pt")


def test_the_checksum_is_stored_verified_and_removed(tmp_path):
    save_tiny(tmp_path / "a.pt")
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw["checksum"].startswith("sha256:") and len(raw["checksum"]) == 7 + 64
    state = ck.load_checkpoint(tmp_path / "a.pt")
    assert "checksum" not in state
    assert ck.checksum(state) == raw["checksum"]  # a list and a tuple of the same values agree


def test_the_checksum_covers_every_byte_of_every_tensor():
    base = {"w": torch.zeros(4, dtype=torch.bfloat16), "n": 1}
    variants = [
        {"w": torch.zeros(4, dtype=torch.float16), "n": 1},  # same bytes, another dtype
        {"w": torch.zeros(2, 2, dtype=torch.bfloat16), "n": 1},  # same bytes, another shape
        {"w": torch.tensor([0, 0, 0, 1e-30], dtype=torch.bfloat16), "n": 1},
        {"w": torch.zeros(4, dtype=torch.bfloat16), "n": True},
        {"w": torch.zeros(4, dtype=torch.bfloat16), "n": 1.0},
    ]
    assert len({ck.checksum(s) for s in [base, *variants]}) == 1 + len(variants)
    assert ck.checksum(base) == ck.checksum({"n": 1, "w": torch.zeros(4, dtype=torch.bfloat16)})


def test_a_value_torch_cannot_load_safely_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match=r"state\['history'\]\[0\]\['acc'\] is a numpy.float64"):
        ck.save_atomic({"history": [{"acc": np.float64(0.5)}]}, tmp_path / "a.pt")
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    model = tiny_model()
    state = {"format": ck.FORMAT, "model": model.state_dict(), "build_args": model.build_args}
    torch.save(state, tmp_path / "old.pt")  # as stbp wrote them before checksums
    with pytest.warns(ck.CheckpointWarning, match="old.pt has no checksum"):
        loaded = ck.load_model(tmp_path / "old.pt")
    assert loaded.build_args == model.build_args


def test_torchs_advice_to_load_unsafely_is_not_passed_on(tmp_path):
    torch.save({"format": ck.FORMAT, "x": Payload()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint(tmp_path / "evil.pt")
    message = str(info.value)
    assert "weights_only" not in message and "Re-run" not in message and "\n" not in message
    assert "system" in message  # what it holds instead


# ------------------------------------------------------------------------- load_model


@pytest.mark.parametrize("missing", ["build_args", "model"])
def test_a_missing_entry_is_named_with_the_file(tmp_path, missing):
    model = tiny_model()
    state = {"model": model.state_dict(), "build_args": model.build_args}
    del state[missing]
    ck.save_atomic(state, tmp_path / "hand.pt")
    with pytest.raises(ck.CheckpointError, match=f"hand.pt: no '{missing}' entry"):
        ck.load_model(tmp_path / "hand.pt")


def test_build_args_that_describe_no_network_are_named(tmp_path):
    model = tiny_model()
    ck.save_atomic({"model": model.state_dict(), "build_args": {"spec": "4C3"}}, tmp_path / "h.pt")
    with pytest.raises(ck.CheckpointError, match="h.pt: its 'build_args' do not describe"):
        ck.load_model(tmp_path / "h.pt")


def test_the_documented_spelling_works_after_a_plain_import():
    code = "import stbp; print(stbp.checkpoint.load_model.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "load_model"


# ------------------------------------------------------------------------- curves


def history(epochs, validation=True):
    rows = []
    for e in range(1, epochs + 1):
        row = {
            "epoch": e,
            "train_loss": 0.1 / e,
            "train_acc": 0.9,
            "test_loss": 0.2 / e,
            "test_acc": 0.8 + 0.01 * e,
            "rate_lif_conv1": 0.1,
            "epoch_seconds": 9.0,
            "lr": 1e-3,
        }
        if validation:
            row |= {"val_loss": 0.15 / e, "val_acc": 0.85}
        rows.append(row)
    return rows


def test_curves_leave_the_pyplot_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        ck.plot_curves(history(2), tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_curves_show_percent_validation_and_the_selected_epoch():
    loss, acc = ck.curves_figure(history(3), selected_epoch=2).axes
    assert acc.get_ylabel() == "accuracy (%)"
    lines = {line.get_label(): line for line in acc.get_lines()}
    assert set(lines) == {"train", "val", "test", "selected (epoch 2)"}
    assert list(lines["test"].get_ydata()) == pytest.approx([81, 82, 83])
    assert list(lines["selected (epoch 2)"].get_xdata()) == [2, 2]
    no_val = ck.curves_figure(history(3, validation=False)).axes[0]
    assert {line.get_label() for line in no_val.get_lines()} == {"train", "test"}


def test_a_one_epoch_run_gets_whole_epoch_ticks():
    for ax in ck.curves_figure(history(1)).axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == [1]


def test_run_files_mark_the_summarys_selected_epoch(tmp_path, monkeypatch):
    drawn = []
    real = ck.curves_figure
    monkeypatch.setattr(ck, "curves_figure", lambda h, e=None: drawn.append(e) or real(h, e))
    ck.write_run_files(tmp_path, history(3), {"selected_epoch": 2})
    ck.write_run_files(tmp_path, history(3), {"selected_epoch": 2}, selected_epoch=3)
    assert drawn == [2, 3]
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,train_loss")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.png",
        "metrics.csv",
        "summary.json",
    ]
