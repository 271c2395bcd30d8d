"""The `stbp` command line: version, and one-line errors for checkpoints that cannot be used."""

import copy
import os

import pytest
import torch

import stbp
from stbp import checkpoint as ck
from stbp.cli import main
from stbp.config import DEFAULTS

READERS = {  # every command that reads a checkpoint, with the flags it needs besides
    "eval": ["eval"],
    "stats": ["stats", "--batches", "1"],
    "plot raster": ["plot", "raster"],
    "plot rates": ["plot", "rates", "--batches", "1"],
    "export-nir": ["export-nir", "--out", "model.nir"],
}


def hand_made(path, drop=()):
    """A checkpoint of a tiny 1x28x28 network on the embedded MNIST digits."""
    torch.manual_seed(0)
    net = stbp.build("4C3-AP4-16FC-Voting", (1, 28, 28), T=2)
    state = {"model": net.state_dict(), "build_args": net.build_args, "epoch": 1,
             "config": copy.deepcopy(DEFAULTS)}  # fmt: skip
    ck.save_atomic({k: v for k, v in state.items() if k not in drop}, path)
    return path


def run_fails(argv, capsys) -> str:
    """Run `stbp argv`; it must fail with exit code 2 and one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"stbp {stbp.__version__}"


@pytest.mark.parametrize("command", list(READERS))
def test_a_corrupt_checkpoint_is_refused_by_every_command(tmp_path, capsys, command):
    path = hand_made(tmp_path / "best.pt")
    state = torch.load(path, weights_only=True)
    state["model"]["layers.fc1.module.1.weight"][0, 0] += 1.0  # one weight changed
    torch.save(state, path)
    err = run_fails([*READERS[command], "--checkpoint", str(path)], capsys)
    assert f"{path}: checksum mismatch: the file is corrupt" in err


@pytest.mark.parametrize("command", list(READERS))
def test_a_checkpoint_without_build_args_is_one_line(tmp_path, capsys, command):
    path = hand_made(tmp_path / "hand.pt", drop=("build_args",))
    err = run_fails([*READERS[command], "--checkpoint", str(path)], capsys)
    assert f"{path}: no 'build_args' entry" in err


def test_an_old_checkpoint_loads_with_a_one_line_warning(tmp_path, capsys):
    path = hand_made(tmp_path / "old.pt")
    state = torch.load(path, weights_only=True)
    del state["checksum"]  # as stbp wrote them before checksums
    torch.save(state, path)
    assert main(["stats", "--checkpoint", str(path), "--batches", "1", "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == (
        f"stbp: warning: {path} has no checksum (written by an older stbp): it loads, but a "
        "corrupt file cannot be told from a good one"
    )
    assert "4 samples" in out



def test_a_reader_that_stops_early_gets_no_traceback(monkeypatch, tmp_path):
    """`stbp stats ... | head`: the pipe closes while stbp still writes."""
    import stbp.commands

    def closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(stbp.commands, "_cmd_configs", closed_pipe)
    monkeypatch.setattr(os, "dup2", lambda fd, fd2: None)  # leave pytest's stdout alone
    assert main(["configs"]) == 0
