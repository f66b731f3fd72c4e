"""``fedsar-sim knn``: a federation's checkpoint embeds unseen data at the depth its
sites shared."""

from __future__ import annotations

import json

import numpy as np
import torch

from models import ModelConfig, build_model, split_state
from simulations.knn import embed, knn_top1, load_backbone
from skeletons.atomic import write_arrays
from skeletons.layouts import KINECT_V1

TINY = ModelConfig(channels=(8, 8, 16, 16), strides=(1, 2, 1, 2), temporal_kernel=3, norm_groups=4)


def _checkpoint(folder, shared_blocks: int):
    torch.manual_seed(0)
    model = build_model(KINECT_V1, 3, 1, TINY)
    shared, _ = split_state(model.state_dict(), "fsar", shared_blocks=shared_blocks)
    write_arrays(folder / "global.npz", {k: v.numpy() for k, v in shared.items()})
    (folder / "global.json").write_text(json.dumps(
        {"layout": "kinect-v1", "config": TINY.to_dict(), "policy": "fsar", "shared_blocks": shared_blocks}))
    return model


def test_checkpoint_of_shallow_sharing_embeds_after_the_shared_blocks(tmp_path):
    source = _checkpoint(tmp_path, shared_blocks=2)
    model, depth = load_backbone(tmp_path)
    assert depth == 2
    x = np.random.default_rng(0).normal(size=(5, 3, 12, 20, 1)).astype(np.float32)
    z = embed(model, x, depth)
    assert z.shape == (5, TINY.channels[1])
    with torch.no_grad():
        expected = model.block_features(torch.from_numpy(x), 2).mean(dim=(2, 3)).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(z, expected, atol=1e-5)
    loaded, kept = model.state_dict(), source.state_dict()
    shared, _ = split_state(kept, "fsar", shared_blocks=2)
    assert all(torch.equal(loaded[k], kept[k]) for k in shared)  # the shared blocks came from the checkpoint


def test_full_checkpoint_embeds_the_whole_backbone_and_knn_is_subject_disjoint(tmp_path):
    _checkpoint(tmp_path, shared_blocks=0)
    model, depth = load_backbone(tmp_path)
    assert depth == TINY.num_blocks
    x = np.random.default_rng(1).normal(size=(4, 3, 12, 20, 1)).astype(np.float32)
    assert embed(model, x, depth).shape == (4, TINY.channels[-1])
    z = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2, 3, 3]]  # each subject alone in its corner
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    subjects = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert knn_top1(z, y, subjects, k=1, folds=4) < 1.0  # its own subject's twin is never a neighbour


def test_the_command_takes_the_model_file_too_and_names_what_is_missing(tmp_path, capsys):
    from simulations.cli import main

    _checkpoint(tmp_path, shared_blocks=4)
    assert main(["knn", "--checkpoint", str(tmp_path / "global.npz"), "--dataset", "synthetic"]) == 0
    assert "synthetic: k-NN (k=5, 5 subject folds) top-1" in capsys.readouterr().out
    assert main(["knn", "--checkpoint", str(tmp_path / "nosuch"), "--dataset", "synthetic"]) == 2
    assert "nosuch does not exist" in capsys.readouterr().err
    assert main(["knn", "--checkpoint", str(tmp_path), "--dataset", "nw-ucla", "--data-root", str(tmp_path)]) == 2
    assert f"--data-root {tmp_path} holds no nw-ucla/ folder" in capsys.readouterr().err
