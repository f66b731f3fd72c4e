"""``fedsar-sim knn``: how well the federation's shared backbone transfers to unseen data.

As in FSAR's unseen-data-set test: embed a data set the federation never saw with the
checkpoint's shared parameters (the personal parts stay at their initial values) and
report k-NN top-1, cross-validated by subject (no subject in both the gallery and the
queries).
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from skeletons.clikit import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="output folder of fedsar-sim run (global.npz, global.json), or its global.npz")
    parser.add_argument("--dataset", required=True, help="data set name, e.g. msr-action3d or synthetic")
    parser.add_argument("--data-root", default="", help="folder holding the data sets")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5, help="subject-wise folds")
    parser.add_argument("--num-frames", type=int, default=None)


def load_backbone(checkpoint: Path) -> tuple[torch.nn.Module, int]:
    """A model with the checkpoint's shared parameters loaded, and how many of its blocks
    the federation shared (the depth whose features are worth embedding)."""
    from models import ModelConfig, build_model
    from models.roles import merge_state
    from skeletons.atomic import read_arrays
    from skeletons.layouts import get_layout

    meta_path, arrays_path = checkpoint / "global.json", checkpoint / "global.npz"
    for path in (meta_path, arrays_path):
        if not path.is_file():
            raise UserError(f"--checkpoint {checkpoint}: {path.name} is missing")
    meta = json.loads(meta_path.read_text())
    model = build_model(get_layout(meta["layout"]), 1, 1, ModelConfig(**meta["config"]))
    shared = {k: torch.from_numpy(v) for k, v in read_arrays(arrays_path).items()}
    state = model.state_dict()
    loadable = {k: v for k, v in merge_state(shared, {}).items() if k in state and state[k].shape == v.shape}
    state.update(loadable)
    model.load_state_dict(state)
    return model.eval(), int(meta.get("shared_blocks") or 0) or model.num_blocks


@torch.no_grad()
def embed(model: torch.nn.Module, x: np.ndarray, upto: int | None = None, batch: int = 64) -> np.ndarray:
    out = [model.embed(torch.from_numpy(x[i : i + batch]), upto) for i in range(0, len(x), batch)]
    z = torch.cat(out).numpy()
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-8)


def knn_top1(z: np.ndarray, y: np.ndarray, subjects: np.ndarray, k: int, folds: int) -> float:
    """Cosine k-NN top-1 with subject-disjoint folds."""
    unique = np.unique(subjects)
    folds = min(folds, len(unique))
    if folds < 2:
        raise UserError("k-NN needs at least two subjects")
    groups = np.array_split(np.random.default_rng(0).permutation(unique), folds)
    correct = 0
    for group in groups:
        query = np.isin(subjects, group)
        sims = z[query] @ z[~query].T
        nearest = np.argsort(-sims, axis=1)[:, :k]
        votes = y[~query][nearest]
        pred = np.array([np.bincount(v).argmax() for v in votes])
        correct += int((pred == y[query]).sum())
    return correct / len(y)


def run(args: argparse.Namespace) -> int:
    from skeletons.datasets import in_layout, load_dataset
    from skeletons.preprocess import PreprocessConfig, to_arrays

    checkpoint = Path(args.checkpoint)
    if checkpoint.is_file() and checkpoint.name == "global.npz":  # the run's model file: its folder
        checkpoint = checkpoint.parent
    if not checkpoint.is_dir():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist (give the output folder of fedsar-sim run)")
    model, depth = load_backbone(checkpoint)
    meta = json.loads((checkpoint / "global.json").read_text())
    root = None
    if args.dataset != "synthetic":
        if not args.data_root:
            raise UserError(f"data set {args.dataset!r} needs --data-root")
        root = Path(args.data_root) / args.dataset
        if not root.is_dir():
            raise UserError(f"--data-root {args.data_root} holds no {args.dataset}/ folder (give the folder that "
                            f"holds nw-ucla/, msr-action3d/, kinder-gator/)")
    try:
        dataset = load_dataset(args.dataset, root, **({"layout": meta["layout"]} if root is None else {}))
    except (OSError, ValueError) as err:
        raise UserError(f"{args.dataset}: {err}") from None
    dataset = in_layout(dataset, meta["layout"])
    x, y = to_arrays(dataset, PreprocessConfig(num_frames=args.num_frames or 52))
    subjects = np.array([s.subject for s in dataset.samples])
    top1 = knn_top1(embed(model, x, depth), y, subjects, args.k, args.folds)
    chance = np.bincount(y).max() / len(y)
    print(f"{args.dataset}: k-NN (k={args.k}, {args.folds} subject folds) top-1 {100 * top1:.1f}% "
          f"(majority class {100 * chance:.1f}%) on {len(y)} sequences")
    return 0
