"""Input encoders: Bernoulli (the authors' MNIST input) and latency spikes from [0, 1] images,
seeded, resumable and refused with one clear error on normalised inputs."""

import os
import signal

import pytest
import torch
from conftest import checkpoint_position, start_training, stop_at

from stbp import checkpoint as ck
from stbp import encoders
from stbp.config import load_config, merge, to_toml
from stbp.encoders import ENCODINGS, Bernoulli, IntensityError, Latency, latency_steps, make

# ------------------------------------------------------------------ make


def test_encodings_are_the_config_choices():
    from stbp.config import CHOICES

    assert ENCODINGS == ("analog", "bernoulli", "latency")
    assert CHOICES[("data", "encoding")] == ENCODINGS


def test_make_returns_none_for_analog_and_the_module_otherwise():
    assert make("analog", 8) is None
    assert isinstance(make("bernoulli", 8), Bernoulli) and make("bernoulli", 8).T == 8
    assert isinstance(make("latency", 3), Latency) and make("latency", 3).T == 3


BAD_MAKE = [("poisson", 4, "unknown encoding 'poisson'.*latency"),
            ("bernoulli", 0, "T must be an integer >= 1")]  # fmt: skip


@pytest.mark.parametrize("name, T, match", BAD_MAKE)
def test_make_refuses_bad_arguments_with_one_error(name, T, match):
    with pytest.raises(ValueError, match=match):
        make(name, T)


# ------------------------------------------------------------------ Bernoulli


def test_bernoulli_gives_0_1_spikes_of_shape_T_first_in_the_input_dtype():
    x = torch.rand(3, 1, 5, 5, dtype=torch.float64)
    out = Bernoulli(7)(x)
    assert out.shape == (7, 3, 1, 5, 5) and out.dtype == torch.float64
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_bernoulli_spikes_with_probability_equal_to_the_intensity():
    torch.manual_seed(0)
    levels = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    x = levels.repeat(2000, 1)  # [B = 2000, 5]
    rates = Bernoulli(50)(x).mean(dim=(0, 1))
    assert rates[0] == 0 and rates[-1] == 1  # 0 never fires, 1 fires at every step
    assert torch.allclose(rates, levels, atol=0.005)  # 100,000 draws a level: sd <= 0.0016


def test_bernoulli_draws_afresh_at_every_step():
    torch.manual_seed(0)
    out = Bernoulli(4)(torch.full((1, 1000), 0.5))
    for t in range(1, 4):
        assert not torch.equal(out[0], out[t])
    agreement = (out[0] == out[1]).float().mean()  # independent steps agree half the time
    assert 0.45 < agreement < 0.55


def test_bernoulli_training_draws_come_from_the_global_rng_so_a_resume_repeats_them():
    encoder, x = Bernoulli(5), torch.rand(4, 1, 6, 6)
    saved = torch.get_rng_state()  # what stbp's checkpoints store
    first = torch.cat([encoder(x), encoder(x)])
    torch.set_rng_state(saved)  # what a resume restores
    again = torch.cat([encoder(x), encoder(x)])
    assert torch.equal(first, again)
    assert not torch.equal(first[:5], first[5:])  # the second forward drew new numbers
    assert not torch.equal(torch.get_rng_state(), saved)  # they came from the global RNG


def test_bernoulli_eval_is_reproducible_and_leaves_the_training_rng_alone():
    encoder, x = Bernoulli(5).eval(), torch.rand(4, 1, 6, 6)
    saved = torch.get_rng_state()
    first, second = encoder(x), encoder(x)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), saved)
    assert torch.equal(first, Bernoulli(5).eval()(x))  # any instance: the same seed
    assert not torch.equal(first, Bernoulli(5, eval_seed=1).eval()(x))


def test_bernoulli_keeps_a_half_precision_dtype_and_draws_in_float32():
    x = torch.full((2000,), 0.3).to(torch.bfloat16)  # bf16 0.3 is 0.30078125
    torch.manual_seed(0)
    out = Bernoulli(100)(x)
    assert out.dtype == torch.bfloat16
    assert abs(out.float().mean().item() - 0.30078125) < 0.005


# ------------------------------------------------------------------ Latency


def test_latency_fires_once_at_the_documented_step():
    x = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.1, 0.0]])
    # floor((1 - x) * (T - 1) + 1/2) with T = 5: 0, 1, 2 (2.5 -> 2), 3, 4 (3.6 + 0.5), never
    assert latency_steps(x, 5).tolist() == [[0, 1, 2, 3, 4, -1]]
    out = Latency(5)(x)
    assert out.shape == (5, 1, 6)
    expected = torch.zeros(5, 1, 6)
    for pixel, step in enumerate([0, 1, 2, 3, 4]):
        expected[step, 0, pixel] = 1
    assert torch.equal(out, expected)


def test_latency_is_deterministic_and_earlier_for_brighter_pixels():
    x = torch.rand(8, 1, 7, 7)
    out = Latency(10)(x)
    assert torch.equal(out, Latency(10)(x))
    assert torch.equal(out.sum(dim=0), (x > 0).float())  # one spike per non-zero pixel
    first = out.argmax(dim=0).flatten()
    order = x.flatten().argsort(descending=True)
    assert torch.all(first[order].diff() >= 0)


def test_latency_with_one_step_fires_every_nonzero_pixel_at_once():
    x = torch.tensor([[0.0, 0.01, 1.0]], dtype=torch.float16)
    out = Latency(1)(x)
    assert out.dtype == torch.float16 and out.tolist() == [[[0.0, 1.0, 1.0]]]


@pytest.mark.parametrize("cls", [Bernoulli, Latency])
def test_the_window_can_be_overridden_per_call(cls):
    assert cls(4)(torch.rand(2, 3), T=9).shape == (9, 2, 3)


# ------------------------------------------------------------------ bad input


NORMALISED_CIFAR = (torch.rand(2, 3, 4, 4) - 0.4914) / 0.2470  # what stbp.data.CIFAR10 gives


@pytest.mark.parametrize("cls", [Bernoulli, Latency])
@pytest.mark.parametrize("x", [NORMALISED_CIFAR, torch.full((2, 3), 1.5),
                               torch.tensor([0.5, float("nan")])])  # fmt: skip
def test_intensities_outside_0_1_are_one_clear_error(cls, x):
    with pytest.raises(IntensityError, match=r"intensities in \[0, 1\].*mnist10k.*pixels / 255"):
        cls(4)(x)


@pytest.mark.parametrize("cls", [Bernoulli, Latency])
def test_integer_pixels_are_refused(cls):
    with pytest.raises(IntensityError, match="float intensities in \\[0, 1\\].*torch.uint8"):
        cls(4)(torch.zeros(2, 3, dtype=torch.uint8))


def test_intensity_error_is_a_value_error():
    assert issubclass(encoders.IntensityError, ValueError)


# ------------------------------------------------------------------ device


@pytest.mark.parametrize("cls", [Bernoulli, Latency])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_spikes_are_made_on_the_input_device_and_repeat_under_its_rng(device, cls, mode):
    encoder, x = cls(3).train(mode == "train"), torch.rand(2, 5, device=device)
    rng = torch.cuda if device.type == "cuda" else torch
    saved = rng.get_rng_state()
    first = encoder(x)
    assert first.device == x.device and first.shape == (3, 2, 5)
    rng.set_rng_state(saved)
    assert torch.equal(first, encoder(x))


# ------------------------------------------------------------------ stbp train

ENV = {**os.environ, "STBP_COMPILE": "0", "OMP_NUM_THREADS": "1", "STBP_SPARSE": "0"}
EPOCHS, STEPS = 2, 8


def tiny_config(path, encoding):
    """mnist-authors shrunk to seconds: its Bernoulli input on a tiny net and window."""
    config = merge(load_config("mnist-authors"), {
        "run": {"epochs": EPOCHS, "device": "cpu", "max_steps_per_epoch": STEPS,
                "checkpoint_every": 1, "eval_batch_size": 200},
        "data": {"T": 3, "n_train": 9600, "encoding": encoding},
        "model": {"spec": "8C3-AP2-16FC-Voting"},
        "optim": {"batch_size": 16},
    })  # fmt: skip
    path.write_text(to_toml(config))
    return path


def train(config, out, *extra):
    return start_training(config, out, *extra, env=ENV)


def finished(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    config = tiny_config(folder / "tiny.toml", "bernoulli")
    finished(train(config, folder / "run"))
    return config, ck.load_checkpoint(folder / "run" / "last.pt")


def test_a_bernoulli_run_killed_mid_epoch_resumes_bit_identical(reference, tmp_path):
    config, expected = reference
    out = tmp_path / "run"
    stop_at(train(config, out), out, 2, 3, signal.SIGKILL)
    assert checkpoint_position(out / "last.pt")[0] == 1  # it died inside epoch 2
    finished(train(config, out, "--resume"))
    got = ck.load_checkpoint(out / "last.pt")
    assert got["epoch"] == EPOCHS and got["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    assert without_times(got["history"]) == without_times(expected["history"])


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


def test_the_encoder_draws_differ_from_the_analog_run(reference, tmp_path):
    """The Bernoulli run really trained on spikes: the same seed with analog input ends
    elsewhere, and the checkpoint rebuilds its encoder."""
    config, expected = reference
    assert expected["build_args"]["encoding"] == "bernoulli"
    analog = tiny_config(tmp_path / "analog.toml", "analog")
    finished(train(analog, tmp_path / "run"))
    got = ck.load_checkpoint(tmp_path / "run" / "last.pt")
    assert not torch.equal(got["model"]["layers.conv1.module.weight"],
                           expected["model"]["layers.conv1.module.weight"])  # fmt: skip
