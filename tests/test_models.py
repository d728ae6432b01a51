"""The model family: exact parameter counts, structural pruning, shapes, gradients, errors."""

from __future__ import annotations

import json

import pytest
import torch

from unetpp import ModelConfig, count_parameters, create_model
from unetpp.models import build_model
from unetpp.models.blocks import crop_to, pad_to_multiple
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


# --- anisotropic networks: per-axis pooling (config.strides) and kernels (config.kernel_sizes) ---

ANISO = dict(strides=[[1, 2, 2], [1, 2, 2], [2, 2, 2]], kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]])


@pytest.mark.parametrize("preset", ["paper", "modern"])
def test_anisotropic_3d_unetpp_odd_input_and_exact_prune(preset):
    model = tiny(dims=3, depth=3, base_filters=2, preset=preset, **ANISO)
    assert model.pad_multiple == (2, 8, 8)
    assert model.nodes["0_1"].layers[0].kernel_size == (1, 3, 3)
    assert model.nodes["0_1"].layers[0].padding == (0, 1, 1)
    # the up from row i+1 to row i undoes the pooling of level i+1
    assert model.ups["2_1"].up.stride == (2, 2, 2) and model.ups["1_1"].up.stride == (1, 2, 2)
    assert model.ups["0_1"].up.kernel_size == (1, 2, 2)
    x = torch.randn(1, 1, 5, 37, 41)
    with torch.no_grad():
        full = model(x)
        assert sorted(full) == [1, 2, 3]
        for level in model.levels:
            assert tuple(full[level].shape) == (1, 1, 5, 37, 41)
            pruned = model.prune(level)
            assert pruned.pad_multiple == (2, 8, 8)
            assert pruned.config.strides == tuple(map(tuple, ANISO["strides"][:level]))
            assert len(pruned.config.kernel_sizes) == level + 1
            assert torch.equal(pruned(x), full[level])


def test_anisotropic_pruned_config_rebuilds_the_same_parameters():
    model = tiny(dims=3, depth=3, base_filters=2, **ANISO)
    pruned = model.prune(2)
    with torch.device("meta"):
        rebuilt = build_model(pruned.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in pruned.state_dict().items()}


@pytest.mark.parametrize("arch", ["unet", "wide-unet"])
@pytest.mark.parametrize("up", ["transpose", "interp"])
def test_anisotropic_unet_3d_and_2d(arch, up):
    model = tiny(arch, dims=3, depth=3, base_filters=2, up=up, **ANISO)
    assert model.pad_multiple == (2, 8, 8)
    assert tuple(model(torch.randn(1, 1, 5, 37, 41)).shape) == (1, 1, 5, 37, 41)
    model2d = tiny(arch, dims=2, depth=2, base_filters=2, up=up, strides=[[1, 2], [2, 2]],
                   kernel_sizes=[[1, 3], [3, 3], [3, 3]])
    assert model2d.pad_multiple == (2, 4)
    assert tuple(model2d(torch.randn(2, 1, 7, 13)).shape) == (2, 1, 7, 13)


def test_anisotropic_2d_unetpp_interp_prune_exact():
    model = tiny(dims=2, depth=3, base_filters=2, up="interp", strides=[[2, 1], [2, 2], [1, 2]],
                 kernel_sizes=[[3, 1], [3, 3], [3, 3], [1, 3]])
    x = torch.randn(2, 1, 11, 9)
    with torch.no_grad():
        full = model(x)
        for level in model.levels:
            assert tuple(full[level].shape) == (2, 1, 11, 9)
            assert torch.equal(model.prune(level)(x), full[level])


def test_flat_kernel_has_a_third_of_the_weights():
    iso = meta_model("unetpp", dims=3, depth=3, base_filters=4)
    flat = meta_model("unetpp", dims=3, depth=3, base_filters=4,
                      kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])
    for j in range(4):  # row 0 only: both convs of each node, bias unchanged
        for a, b in zip(iso.nodes[f"0_{j}"].layers[::2], flat.nodes[f"0_{j}"].layers[::2]):
            assert b.weight.numel() * 3 == a.weight.numel() and b.bias.numel() == a.bias.numel()
    # row 0 convs (c_in -> 4, then 4 -> 4) with c_in = 1, 8, 12, 16: 27 - 9 = 18 weights fewer each
    assert count_parameters(iso) - count_parameters(flat) == 18 * 4 * sum(c + 4 for c in (1, 8, 12, 16))
    # a (1, 2, 2) transposed conv (row 1 -> row 0: 3 of them, 8 -> 4 channels) has half the weights
    half = meta_model("unetpp", dims=3, depth=3, base_filters=4, strides=[[1, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert count_parameters(iso) - count_parameters(half) == 3 * (8 * 4 * 8 - 8 * 4 * 4)


def test_explicit_isotropic_topology_is_the_default_network():
    default = tiny(dims=3, depth=2)
    explicit = tiny(dims=3, depth=2, strides=[[2, 2, 2]] * 2, kernel_sizes=[[3, 3, 3]] * 3)
    explicit.load_state_dict(default.state_dict())  # same names and shapes
    x = torch.randn(1, 1, 6, 9, 10)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(default(x).values(), explicit(x).values()))
    assert default.pad_multiple == (4, 4, 4) and "strides" not in default.config.to_dict()


def test_anisotropic_summary_and_flops():
    cfg = ModelConfig.from_preset("unetpp", "paper", dims=3, depth=3, base_filters=4, **ANISO)
    s = summarize(cfg, size=(6, 32, 32))
    assert s["size"] == [6, 32, 32] and list(s["params"]["levels"]) == ["1", "2", "3"]
    iso = summarize(cfg.replace(strides=None, kernel_sizes=None), size=(6, 32, 32))
    assert s["params"]["total"] < iso["params"]["total"] and s["flops"]["3"] < iso["flops"]["3"]
    assert summarize(cfg, size=16)["size"] == 16


def test_anisotropic_config_round_trip_and_old_dicts():
    cfg = ModelConfig.from_preset("unetpp", "modern", dims=3, depth=3, **ANISO)
    data = cfg.to_dict()
    assert data["strides"] == ANISO["strides"] and data["kernel_sizes"] == ANISO["kernel_sizes"]
    again = ModelConfig.from_dict(json.loads(json.dumps(data)))
    assert again == cfg and hash(again) == hash(cfg)
    assert again.pool_strides[0] == (1, 2, 2) and again.conv_kernels[-1] == (3, 3, 3)
    old = {"arch": "unetpp", "dims": 2, "in_channels": 1, "classes": 1, "depth": 4, "base_filters": 32,
           "norm": "none", "act": "relu", "up": "transpose", "deep_supervision": True, "preset": "paper"}
    loaded = ModelConfig.from_dict(old)
    assert loaded.strides is None and loaded.kernel_sizes is None and loaded.to_dict() == old
    assert ModelConfig.from_dict({**old, "strides": None, "kernel_sizes": None}) == loaded
    with torch.device("meta"):
        assert count_parameters(build_model(loaded)) == 9_041_700


@pytest.mark.parametrize("changes,message", [
    (dict(strides=[[1, 2, 2]] * 2),
     r"strides must be null or 3 lists \(one per level i = 1..depth\) of 3 values, each 1 or 2, got"),
    (dict(strides=[[1, 2]] * 3), "strides must be null or 3 lists"),
    (dict(strides=[[1, 2, 3]] * 3), "strides must be null or 3 lists"),
    (dict(strides=[[1, True, 2]] * 3), "strides must be null or 3 lists"),
    (dict(strides="2"), "strides must be null"),
    (dict(kernel_sizes=[[3, 3, 3]] * 3),
     r"kernel_sizes must be null or 4 lists \(one per row i = 0..depth\) of 3 values, each 1 or 3, got"),
    (dict(kernel_sizes=[[3, 5, 3]] * 4), "kernel_sizes must be null or 4 lists"),
    (dict(kernel_sizes=[[3, 3.0, 3]] * 4), "kernel_sizes must be null or 4 lists"),
    (dict(kernel_sizes=[[3, 3, 3]] * 10**6), r"got \[\[3, 3, 3\], .*, \.\.\.\]$"),
])
def test_bad_topology_config(changes, message):
    data = ModelConfig.from_preset("unetpp", "paper", dims=3, depth=3).to_dict()
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**data, **changes})


def test_pad_to_multiple_scalar_and_per_axis():
    x = torch.zeros(1, 1, 5, 37, 41)
    padded, spatial = pad_to_multiple(x, 8)
    assert tuple(padded.shape[2:]) == (8, 40, 48) and spatial == (5, 37, 41)
    padded, _ = pad_to_multiple(x, (2, 8, 1))
    assert tuple(padded.shape[2:]) == (6, 40, 41)
    assert tuple(crop_to(padded, spatial).shape[2:]) == spatial
    with pytest.raises(ValueError, match="multiple must be one int or 3 ints"):
        pad_to_multiple(x, (2, 8))
