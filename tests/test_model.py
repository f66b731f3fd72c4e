"""The FSAR network: shapes, the Adaptive Topology, parameter roles, MKD cuts, DP-SGD."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import (
    KINDS,
    PERSONAL_KINDS,
    ModelConfig,
    build_model,
    load_model,
    merge_state,
    parameter_kind,
    save_model,
    split_state,
)
from models.topology import AdaptiveTopology, aggregate, per_sample_grads
from skeletons.layouts import KINECT_V1, NTU25

TINY = ModelConfig(channels=(8, 8, 16, 16), strides=(1, 2, 1, 2), temporal_kernel=3, norm_groups=4)


def _model(layout=KINECT_V1, classes=5, persons=1, config=TINY, seed=0):
    torch.manual_seed(seed)
    return build_model(layout, classes, persons, config)


def _input(n=3, t=12, v=20, m=1, seed=1):
    return torch.randn(n, 3, t, v, m, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", [KINECT_V1, NTU25], ids=["v20", "v25"])
@pytest.mark.parametrize("persons", [1, 2])
def test_shapes_for_layouts_and_persons(layout, persons):
    model = _model(layout, classes=7, persons=persons)
    x = _input(n=2, t=16, v=layout.num_joints, m=persons)
    assert model(x).shape == (2, 7)
    assert model.embed(x).shape == (2, model.feature_dim)
    feats = model.block_features(x, 3)  # block 2 halves the 16 frames
    assert feats.shape == (2, 16, 8, layout.num_joints * persons)
    multiscale = _model(layout, classes=7, persons=persons, config=TINY.with_(temporal="multiscale"))
    assert multiscale(x).shape == (2, 7)
    assert multiscale.block_features(x, 3).shape == feats.shape  # same strides, same shapes


def test_slim_default_and_presets_build():
    for name in ("slim", "fast", "wide", "reference"):
        model = build_model(KINECT_V1, 10, 1, ModelConfig.preset(name))
        assert model(torch.randn(2, 3, 20, 20, 1)).shape == (2, 10), name
    slim = build_model(KINECT_V1, 10, 1, ModelConfig.preset("slim"))
    fast = build_model(KINECT_V1, 10, 1, ModelConfig.preset("fast"))
    # fast halves the frames already in block 1 (slim in block 3); both end at a quarter
    x = torch.randn(2, 3, 32, 20, 1)
    assert fast.block_features(x, 1).shape[2] * 2 == slim.block_features(x, 1).shape[2] == 32
    assert fast.block_features(x, 6).shape[2] == slim.block_features(x, 6).shape[2] == 8
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")


def test_wrong_input_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"\[N, 3, T, 20, M\]"):
        _model()(torch.randn(2, 3, 10, 25, 1))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="strides"):
        ModelConfig(channels=(8, 8), strides=(1,))
    with pytest.raises(ValueError, match="temporal_kernel"):
        ModelConfig(temporal_kernel=4)
    with pytest.raises(ValueError, match="streams"):
        ModelConfig(streams=("joint", "velocity"))
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY


def test_persons_share_weights_and_are_averaged():
    """A sample of two identical persons embeds like one person alone (same weights,
    mean over persons); swapping the persons changes nothing."""
    model = _model(persons=2).eval()
    single = _model(persons=1).eval()
    single.load_state_dict(model.state_dict())
    x = _input(n=2, m=2)
    same = torch.cat([x[..., :1], x[..., :1]], dim=-1)
    assert torch.allclose(model.embed(same), single.embed(x[..., :1]), atol=1e-5)
    assert torch.allclose(model(x), model(x.flip(-1)), atol=1e-5)
    assert not torch.allclose(model(x), model(same), atol=1e-4)


def test_topology_starts_near_physical_graph_and_mixes_terms():
    model = _model()
    topo = model.blocks[0].gcn.topology
    adjacency = model.graph.adjacency
    assert torch.equal(adjacency, torch.from_numpy(KINECT_V1.adjacency()))
    assert topo.influence.abs().max() < 0.05 and topo.unique.abs().max() < 0.05
    with torch.no_grad():
        topo.alpha.fill_(2.0)
        topo.beta.fill_(3.0)
        topo.gamma.fill_(5.0)
    expected = 2 * adjacency + 3 * topo.influence + 5 * topo.unique
    assert torch.allclose(topo.matrix(adjacency), expected)
    assert torch.allclose(topo.matrix(adjacency, shared_only=True), expected - 5 * topo.unique)


def test_fixed_graph_is_not_trained_nor_in_state_dict():
    model = _model()
    names = {n for n, _ in model.named_parameters()}
    assert set(model.state_dict()) == names
    assert all("adjacency" not in n for n in names)


def test_aggregate_matches_dense_reference():
    x = torch.randn(2, 4, 5, 2 * 20)
    mixed = torch.randn(3, 20, 20)
    y = aggregate(x, mixed)
    xr = x.reshape(2, 4, 5, 2, 20)
    ref = torch.einsum("kwv,nctmv->nkctmw", mixed, xr).reshape(2, 12, 5, 40)
    assert torch.allclose(y, ref, atol=1e-5)


def test_topology_per_sample_grads_match_autograd():
    torch.manual_seed(0)
    layer = AdaptiveTopology(3, 20, init_std=0.1)
    adjacency = torch.rand(3, 20, 20)
    x = torch.randn(4, 2, 5, 20)
    target = torch.randn(4, 6, 5, 20)
    out = layer(adjacency, x)
    backprops = torch.autograd.grad(((out - target) ** 2).sum(), out)[0]
    grads = per_sample_grads(layer, [adjacency, x], backprops)
    for i in range(4):
        layer.zero_grad()
        ((layer(adjacency, x[i:i + 1]) - target[i:i + 1]) ** 2).sum().backward()
        for p in layer.parameters():
            assert torch.allclose(grads[p][i], p.grad, atol=1e-4), p.shape


# ---------------------------------------------------------------------------- roles

@pytest.mark.parametrize("statistics", [False, True])
def test_every_parameter_has_exactly_one_role_and_split_round_trips(statistics):
    state = _model(config=TINY.with_(statistics=statistics)).state_dict()
    for policy, kinds in PERSONAL_KINDS.items():
        shared, personal = split_state(state, policy)
        assert not set(shared) & set(personal)
        assert set(shared) | set(personal) == set(state)
        assert all(parameter_kind(k) in kinds for k in personal)
        assert all(parameter_kind(k) not in kinds for k in shared)
        merged = merge_state(shared, personal)
        assert merged.keys() == state.keys()
        assert all(merged[k] is state[k] for k in state)
    assert {parameter_kind(k) for k in state} == set(KINDS) - ({"scale"} if not statistics else set())


def test_fsar_personal_is_exactly_unique_scalars_and_head():
    state = _model().state_dict()
    _, personal = split_state(state, "fsar")
    expected = {
        k for k in state
        if k.endswith((".unique", ".alpha", ".beta", ".gamma")) or k.startswith("head.")
    }
    assert set(personal) == expected
    assert any(k.endswith(".influence") for k in split_state(state, "fsar")[0])
    assert split_state(state, "fedavg")[1] == {}
    assert set(split_state(state, "local")[1]) == set(state)
    fedbn_personal = split_state(state, "fedbn")[1]
    assert fedbn_personal and all(".norm." in k for k in fedbn_personal)


def test_shared_blocks_keeps_deeper_blocks_whole_on_the_site():
    state = _model().state_dict()  # TINY has 4 blocks
    shared, personal = split_state(state, "fsar", shared_blocks=2)
    assert set(shared) | set(personal) == set(state) and not set(shared) & set(personal)
    assert shared and all(k.startswith(("blocks.0.", "blocks.1.")) for k in shared)
    assert all(k in personal for k in state if k.startswith(("blocks.2.", "blocks.3.", "head.")))
    # within the shared blocks the policy still decides: U and the scalars stay home
    assert not any(k.endswith((".unique", ".alpha")) for k in shared)
    assert split_state(state, "fsar", shared_blocks=0) == split_state(state, "fsar")
    assert split_state(state, "fsar", shared_blocks=4) == split_state(state, "fsar")
    assert "head.weight" in split_state(state, "fedavg", shared_blocks=2)[1]  # even where heads are shared
    with pytest.raises(ValueError, match="shared-blocks must be >= 0"):
        split_state(state, "fsar", shared_blocks=-1)


def test_embed_up_to_a_block_pools_that_blocks_features():
    model = _model().eval()
    x = _input()
    with torch.no_grad():
        z = model.embed(x, upto=2)
        assert z.shape == (3, TINY.channels[1])
        assert torch.allclose(z, model.block_features(x, 2).mean(dim=(2, 3)))
        assert torch.equal(model.embed(x, upto=4), model.embed(x))


def test_roles_ignore_wrapper_prefixes_and_reject_unknown_policy():
    assert parameter_kind("_module.blocks.3.gcn.topology.unique") == "unique"
    assert parameter_kind("_module.head.weight") == "head"
    with pytest.raises(ValueError, match="unknown parameter policy 'fedxyz'"):
        split_state({}, "fedxyz")
    with pytest.raises(ValueError, match="both shared and personal"):
        merge_state({"a": 1}, {"a": 2})


# ------------------------------------------------------------------------ MKD cuts

@pytest.mark.parametrize("persons", [1, 2])
def test_block_features_then_forward_from_equals_forward(persons):
    model = _model(persons=persons).eval()
    x = _input(m=persons)
    full = model(x)
    for grain in range(model.num_blocks + 1):
        cut = model.forward_from(model.block_features(x, grain), grain)
        assert torch.allclose(cut, full, atol=1e-5), grain
    with pytest.raises(ValueError, match="block index"):
        model.block_features(x, model.num_blocks + 1)


def test_shared_topology_only_ignores_unique_topology():
    model = _model().eval()
    x = _input()
    before = model.block_features(x, 2, shared_topology_only=True)
    with torch.no_grad():
        for block in model.blocks:
            block.gcn.topology.unique.add_(torch.randn_like(block.gcn.topology.unique))
    after_shared = model.block_features(x, 2, shared_topology_only=True)
    after_full = model.block_features(x, 2)
    assert torch.allclose(before, after_shared, atol=1e-6)
    assert not torch.allclose(after_shared, after_full, atol=1e-3)


# ------------------------------------------------------------------------------ DP

def test_opacus_validator_is_clean():
    from opacus.validators import ModuleValidator

    for config in (TINY, ModelConfig(), ModelConfig.preset("wide"), TINY.with_(temporal="separable"),
                   TINY.with_(temporal="multiscale")):
        model = build_model(KINECT_V1, 10, 2, config)
        assert ModuleValidator.validate(model, strict=True) == []


@pytest.mark.parametrize("persons,temporal", [(1, "full"), (2, "full"), (1, "multiscale")])
def test_one_opacus_dp_sgd_step_changes_parameters(persons, temporal):
    from opacus import PrivacyEngine

    model = _model(persons=persons, config=TINY.with_(temporal=temporal))
    x = _input(n=8, m=persons)
    y = torch.arange(8) % 5
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    engine = PrivacyEngine()
    private, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=0.5, max_grad_norm=1.0, poisson_sampling=False,
    )
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    xb, yb = next(iter(loader))
    loss = torch.nn.functional.cross_entropy(private(xb), yb)
    loss.backward()
    topo = model.blocks[0].gcn.topology
    assert topo.influence.grad_sample.shape == (4,) + tuple(topo.influence.shape)
    assert topo.alpha.grad_sample.shape == (4,)
    optimizer.step()
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == set(before)  # noise reaches every parameter


# ------------------------------------------------------------------------------ io

def test_save_and_load_round_trip_without_pickle(tmp_path):
    model = _model(NTU25, classes=4, persons=2).eval()
    weights, meta = save_model(model, tmp_path / "model")
    assert weights.name == "model.npz" and meta.name == "model.json"
    desc = json.loads(meta.read_text())
    assert desc["num_classes"] == 4 and desc["layout"]["name"] == "ntu25"
    with np.load(weights, allow_pickle=False) as arrays:
        assert set(arrays.files) == set(model.state_dict())
    loaded = load_model(tmp_path / "model.npz")
    x = _input(v=25, m=2)
    assert torch.allclose(loaded(x), model(x))


def test_load_names_the_file_at_fault(tmp_path):
    model = _model()
    save_model(model, tmp_path / "m")
    other = _model(classes=9)
    save_model(other, tmp_path / "o")
    (tmp_path / "o.json").replace(tmp_path / "m.json")
    with pytest.raises(ValueError, match=r"m\.npz.*head"):
        load_model(tmp_path / "m")
