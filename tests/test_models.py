"""The model family: exact parameter counts, structural pruning, shapes, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from unetpp import ModelConfig, count_parameters, create_model
from unetpp.models.summary import count_flops, summarize


def meta_model(*args, **kwargs):
    with torch.device("meta"):  # counting parameters needs no memory
        return create_model(*args, **kwargs)


# The contract's table, to the unit.
@pytest.mark.parametrize("arch,dims,ds,expected", [
    ("unet", 2, None, 7_759_521),
    ("wide-unet", 2, None, 9_282_246),
    ("unetpp", 2, True, 9_041_700),
    ("unet", 3, None, 22_575_329),
    ("unetpp", 3, True, 26_198_372),
])
def test_paper_parameter_counts(arch, dims, ds, expected):
    assert count_parameters(meta_model(arch, preset="paper", dims=dims, deep_supervision=ds)) == expected


@pytest.mark.parametrize("level,expected", [(1, 100_961), (2, 511_105), (3, 2_204_961), (4, 9_041_601)])
def test_paper_pruned_parameter_counts(level, expected):
    assert count_parameters(meta_model("unetpp", preset="paper").prune(level)) == expected


def test_unetpp_without_deep_supervision_has_one_head():
    model = meta_model("unetpp", preset="paper", deep_supervision=False)
    assert count_parameters(model) == 9_041_601
    assert model.levels == (4,)


def tiny(arch="unetpp", dims=2, **kw):
    torch.manual_seed(0)
    kw.setdefault("base_filters", 4)
    kw.setdefault("depth", 3 if dims == 3 else 4)
    return create_model(arch, dims=dims, **kw).eval()


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 37, 50)), (3, (1, 1, 9, 17, 12))])
@pytest.mark.parametrize("preset", ["paper", "modern"])
def test_prune_equals_full_network_head(dims, shape, preset):
    model = tiny(dims=dims, preset=preset)
    x = torch.randn(shape)
    with torch.no_grad():
        full = model(x)
        for level in model.levels:
            pruned = model.prune(level)
            torch.testing.assert_close(pruned(x), full[level], rtol=1e-5, atol=1e-6)


def test_prune_holds_only_needed_nodes_and_shares_weights():
    model = tiny(depth=4)
    pruned = model.prune(2)
    assert sorted(pruned.nodes) == sorted(["0_0", "1_0", "2_0", "0_1", "1_1", "0_2"])
    assert sorted(pruned.heads) == ["2"]
    assert pruned.nodes["0_1"] is model.nodes["0_1"]
    full_ptrs = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in full_ptrs for p in pruned.parameters())


def test_pruned_flops_fall_with_level():
    model = meta_model("unetpp", preset="paper")
    flops = [count_flops(model.prune(level), (1, 1, 64, 64)) for level in (1, 2, 3, 4)]
    assert flops == sorted(flops) and len(set(flops)) == 4
    assert count_flops(model, (1, 1, 64, 64)) >= flops[-1]


def test_summary_matches_contract():
    s = summarize(ModelConfig.from_preset("unetpp", "paper"), size=96)
    assert s["params"] == {"total": 9_041_700, "levels": {"1": 100_961, "2": 511_105,
                                                           "3": 2_204_961, "4": 9_041_601}}
    assert list(s["flops"]) == ["1", "2", "3", "4"]
    s = summarize(ModelConfig.from_preset("unet", "paper"), size=96)
    assert s["params"]["levels"] == {"4": 7_759_521}


def test_gradients_reach_every_parameter_with_deep_supervision():
    model = tiny().train()
    out = model(torch.randn(2, 1, 32, 32))
    sum(o.mean() for o in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("arch", ["unetpp", "unet", "wide-unet"])
@pytest.mark.parametrize("dims,shape", [(2, (1, 3, 33, 47)), (3, (2, 3, 7, 10, 19))])
def test_shapes_odd_sizes_multiclass(arch, dims, shape):
    model = tiny(arch, dims=dims, in_channels=3, classes=4)
    out = model(torch.randn(shape))
    outs = out.values() if isinstance(out, dict) else [out]
    for o in outs:
        assert tuple(o.shape) == (shape[0], 4) + shape[2:]


def test_unet_prune_only_full_depth():
    model = tiny("unet")
    assert model.prune(4) is model
    with pytest.raises(ValueError, match="only level 4"):
        model.prune(2)


def test_prune_level_errors():
    model = tiny()
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="level must be an integer in 1..4"):
            model.prune(bad)
    no_ds = tiny(deep_supervision=False)
    with pytest.raises(ValueError, match="no head at level 2"):
        no_ds.prune(2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(dims=4), "dims must be 2 or 3, got 4"),
    (dict(depth=0), "depth must be an integer in"),
    (dict(in_channels=0), "in_channels must be an integer in"),
    (dict(classes=-1), "classes must be an integer in"),
    (dict(arch="vnet"), "unknown arch 'vnet'"),
    (dict(preset="fancy"), "preset must be one of paper, modern"),
    (dict(arch="unet", deep_supervision=True), "deep supervision needs arch 'unetpp'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(**kwargs)


@pytest.mark.parametrize("shape,message", [
    ((1, 32, 32), r"expected a 4-D tensor \(N, C, H, W\) for a 2D model, got shape \(1, 32, 32\)"),
    ((1, 1, 8, 32, 32), "expected a 4-D tensor"),
    ((1, 3, 32, 32), r"expected 1 input channel\(s\), got 3"),
])
def test_bad_input_tensor(shape, message):
    model = tiny()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


def test_config_round_trip_and_tampering():
    cfg = ModelConfig.from_preset("unetpp", "modern", dims=3, classes=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys: evil"):
        ModelConfig.from_dict({**cfg.to_dict(), "evil": 1})
    with pytest.raises(ValueError, match="base_filters must be an integer"):
        ModelConfig.from_dict({**cfg.to_dict(), "base_filters": 10**9})


def test_modern_preset_uses_instance_norm_and_leaky_relu():
    model = tiny(preset="modern")
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"InstanceNorm2d", "LeakyReLU"} <= kinds and "ReLU" not in kinds
