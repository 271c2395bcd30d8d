"""`build` with the neuron variants and the spike encoders; `make_model` passes them on."""

import pytest
import torch

import stbp
from stbp.config import ModelSettings
from stbp.models import BUILD_ARG_DEFAULTS, complete_build_args
from stbp.train import make_model

SPEC, SHAPE = "4C3(Enc)-AP2-8FC-Voting", (1, 6, 6)

VARIANTS = {
    "soft": dict(reset="soft"),
    "detach": dict(detach_reset=True),
    "learn-decay": dict(learn_decay=True),
    "learn-threshold": dict(learn_threshold=True),
    "per-channel": dict(learn_decay=True, learn_threshold=True, per_channel=True),
    "soft-learnt": dict(reset="soft", detach_reset=True, learn_decay=True, per_channel=True),
    "bernoulli": dict(encoding="bernoulli"),
    "latency": dict(encoding="latency"),
}


def _lifs(model: stbp.SNN) -> dict[str, stbp.LIF]:
    return {n: m for n, m in model.layers.named_children() if isinstance(m, stbp.LIF)}


def _build(**kwargs) -> stbp.SNN:
    torch.manual_seed(0)
    return stbp.build(SPEC, SHAPE, num_classes=3, votes=2, T=4, **kwargs)


def test_each_lif_layer_gets_the_variant_and_its_channel_count():
    model = _build(reset="soft", detach_reset=True, learn_decay=True, per_channel=True)
    lifs = _lifs(model)
    assert list(lifs) == ["lif_conv1", "lif_fc1", "lif_voting"]
    for name, channels in (("lif_conv1", 4), ("lif_fc1", 8), ("lif_voting", 6)):
        p = lifs[name].p
        assert p.reset == "soft" and p.detach_reset
        assert p.decay.shape == (channels,)
        torch.testing.assert_close(p.decay, torch.full((channels,), 0.2))
        assert p.threshold == 0.5  # not learnt: a number
    default = _lifs(_build())["lif_conv1"].p
    assert default == stbp.LIFParameters()


def test_reset_options_may_come_inside_lif():
    lif = stbp.LIFParameters(0.3, 0.4, reset="soft", detach_reset=True)
    model = _build(lif=lif)
    assert _lifs(model)["lif_fc1"].p == lif
    assert model.build_args["reset"] == "soft" and model.build_args["detach_reset"] is True
    assert model.build_args["lif"] == {"decay": 0.3, "threshold": 0.4, "surrogate": "rect",
                                       "width": 1.0}  # fmt: skip
    # given as arguments of their own, over a lif of the defaults: the same network
    again = _build(lif=stbp.LIFParameters(0.3, 0.4), reset="soft", detach_reset=True)
    assert again.build_args == model.build_args


def test_learnt_parameters_live_in_the_state_dict():
    model = _build(learn_decay=True, learn_threshold=True, per_channel=True)
    with torch.no_grad():
        model.layers.lif_conv1.decay_logit.fill_(1.5)
        model.layers.lif_fc1.threshold_log.fill_(-0.5)
    again = stbp.rebuild(model.build_args)
    assert not torch.equal(again.layers.lif_conv1.p.decay, model.layers.lif_conv1.p.decay)
    again.load_state_dict(model.state_dict())
    for name, lif in _lifs(model).items():
        for field in ("decay", "threshold"):
            assert torch.equal(getattr(_lifs(again)[name].p, field), getattr(lif.p, field))
    x = torch.rand(2, *SHAPE)
    assert torch.equal(again.eval()(x), model.eval()(x))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_build_args_round_trip_through_rebuild(variant):
    model = _build(**VARIANTS[variant])
    for key, value in VARIANTS[variant].items():
        assert model.build_args[key] == value
    assert set(BUILD_ARG_DEFAULTS) <= set(model.build_args)
    again = stbp.rebuild(model.build_args)
    assert again.build_args == model.build_args
    again.load_state_dict(model.state_dict())  # strict: the same parameters and buffers
    assert [type(m) for m in again.layers] == [type(m) for m in model.layers]
    x = torch.rand(3, *SHAPE)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_old_build_args_without_the_new_keys_rebuild_the_default_network():
    model = _build()
    new_keys = ("reset", "detach_reset", "learn_decay", "learn_threshold", "per_channel",
                "encoding")  # fmt: skip
    old = {k: v for k, v in model.build_args.items() if k not in new_keys}
    old["lif"] = {"decay": 0.2, "threshold": 0.5, "surrogate": "rect", "width": 1.0}
    again = stbp.rebuild(old)
    assert again.build_args == model.build_args
    assert complete_build_args(old) == model.build_args
    again.load_state_dict(model.state_dict())
    assert all(lif.p == stbp.LIFParameters() for lif in _lifs(again).values())
    assert isinstance(again.layers.conv1, stbp.Encoding) and again.encoder is None


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_one_step(variant):
    model = _build(**VARIANTS[variant]).train()
    learnt = {n: p.detach().clone() for n, p in model.named_parameters() if "lif" in n}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 3, (8,))
    loss = stbp.rate_mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    for name, before in learnt.items():
        assert not torch.equal(dict(model.named_parameters())[name], before), name
    if VARIANTS[variant].get("learn_decay") or VARIANTS[variant].get("learn_threshold"):
        assert learnt  # the variant has learnt parameters, and they moved


@pytest.mark.parametrize("encoding", ["bernoulli", "latency"])
def test_an_encoder_goes_first_and_the_first_synapse_gets_spikes(encoding):
    model = _build(encoding=encoding)
    names = list(model.layers._modules)
    assert names[:3] == ["encode", "conv1", "lif_conv1"]
    assert model.encoder is model.layers.encode
    first = model.layers.conv1
    assert type(first) is stbp.Temporal and first.binary_input
    model.eval()  # the Bernoulli encoder draws from a seeded generator in eval mode
    image = torch.rand(2, *SHAPE)
    spikes = model.encode(image)
    assert spikes.shape == (4, 2, *SHAPE) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    with torch.no_grad():
        assert torch.equal(model(image), model(spikes))  # a sequence skips the encoder
        assert model(image, T=6).shape == (2, 3)  # another window: the encoder runs for it


def test_latency_is_the_encoders_spikes_through_the_network():
    model = _build(encoding="latency").eval()
    image = torch.rand(2, *SHAPE)
    expected = stbp.encoders.make("latency", 4)(image)
    torch.testing.assert_close(model.encode(image), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reset": "zero"}, r"reset must be one of 'hard', 'soft'; got 'zero'"),
        ({"detach_reset": 1}, r"detach_reset must be True or False, got 1"),
        ({"learn_decay": "yes"}, r"learn_decay must be True or False, got 'yes'"),
        ({"learn_threshold": None}, r"learn_threshold must be True or False, got None"),
        ({"per_channel": 0}, r"per_channel must be True or False, got 0"),
        ({"per_channel": True}, r"per_channel = True needs learn_decay or learn_threshold"),
        ({"encoding": "poisson"}, r"encoding must be one of 'analog', 'bernoulli', 'latency'"),
        ({"encoding": None}, r"encoding must be one of"),
        ({"learn_decay": True, "lif": stbp.LIFParameters(decay=1.0)}, r"decay = 1.0 cannot be"),
        ({"lif": stbp.LIFParameters(reset="x")}, r"reset = 'x' is not allowed"),
    ],
)
def test_build_checks_the_new_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _build(**kwargs)


def test_make_model_passes_the_model_keys_and_the_encoding():
    settings = ModelSettings(spec=SPEC, in_shape=list(SHAPE), reset="soft", detach_reset=True,
                             learn_decay=True, learn_threshold=True, per_channel=True)  # fmt: skip
    model = make_model(settings, 4, SHAPE, encoding="bernoulli")
    args = model.build_args
    assert (args["reset"], args["detach_reset"], args["encoding"]) == ("soft", True, "bernoulli")
    assert args["learn_decay"] and args["learn_threshold"] and args["per_channel"]
    assert model.layers.lif_conv1.p.decay.shape == (4,)
    default = make_model(ModelSettings(spec=SPEC, in_shape=list(SHAPE)), 4, SHAPE)
    assert {k: default.build_args[k] for k in BUILD_ARG_DEFAULTS} == BUILD_ARG_DEFAULTS
