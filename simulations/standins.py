"""Small generated stand-ins for the five data sets of the ``fsar-paper`` benchmark.

The benchmark reads NTU RGB+D 60 and 120, PKU-MMD parts I and II and UESTC in the
formats researchers keep them in. Those data sets cannot be shipped, so this module
writes a few hundred synthetic motions (Kinect v2 / NTU 25-joint layout) in the same
formats and folder structure, with names that carry the same subject, camera and split
information:

- ``ntu60/ntu60_3danno.pkl``: a pyskl annotation pickle with ``xsub``/``xview`` split
  lists and ``SsssCcccPpppRrrrAaaa`` frame names (subjects and cameras parse from them);
- ``ntu120/nturgbd_skeletons_s018_to_s032/*.skeleton``: raw NTU text files, performer
  ids in the names so the published cross-subject list applies;
- ``pku-mmd-1/``, ``pku-mmd-2/``: long recordings (150 numbers per frame, two body
  slots), label files of ``action,start,end,confidence`` and the split lists
  ``cross-subject.txt``/``cross-view.txt``;
- ``uestc/``: ``aA_dD_pPPP_cC_skeleton.txt`` raw text (``#`` per frame, camera, colour
  and depth point per joint);
- ``paths.toml``: the paths file ``fedsar-sim run --scenario fsar-paper --paths`` reads.

Interaction classes carry a second person in the formats that have two body slots.
Everything follows from ``seed`` and takes a second or two to write.
"""

from __future__ import annotations

import io
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from skeletons.atomic import atomic_path
from skeletons.toml_text import toml_value
from skeletons.sample import SkeletonDataset
from skeletons.standard_splits import NTU120_XSUB_TRAIN_SUBJECTS, NTU60_XSUB_TRAIN_SUBJECTS
from skeletons.synthetic import generate_synthetic

SITES = ("ntu60", "ntu120", "pku-mmd-1", "pku-mmd-2", "uestc")
PATHS_FILE = "paths.toml"
PARTNER_OFFSET = 0.9  # metres to the side of the first person where the second one stands

# Site -> labels the stand-in uses, in the data set's own numbering (1-based action ids
# for NTU and PKU-MMD, a0-a39 for UESTC); the last entry of the NTU and PKU-MMD I lists
# is an interaction (two people).
NTU60_ACTIONS = (1, 8, 9, 23, 27, 58)  # drink water, sit down, stand up, wave, jump, handshake
NTU120_ACTIONS = (61, 69, 80, 95, 99, 106)  # ..., hit other person with something
PKU1_ACTIONS = (1, 6, 13, 17, 33, 14)  # bow, clapping, hand waving, jump up, sitting down, handshaking
PKU2_ACTIONS = (2, 7, 11, 19, 30, 38)
UESTC_ACTIONS = (0, 5, 10, 15, 20, 25)

# Performers: half inside the published cross-subject training lists, half outside.
NTU60_PERFORMERS = (1, 2, 4, 3, 6, 7)  # 1, 2, 4 train; 3, 6, 7 test
NTU120_PERFORMERS = (45, 46, 47, 41, 42, 43)  # 45-47 train; 41-43 test
NTU_CAMERA_YAW = {1: -45.0, 2: 0.0, 3: 45.0}
PKU_VIEW_YAW = {"L": -45.0, "M": 0.0, "R": 45.0}


@dataclass(frozen=True)
class Standin:
    """One written stand-in: where it is, how to read it, and what a reader must find.

    ``train``/``test`` are the sample counts under the scenario's split where that split
    is fixed by names or lists (NTU, PKU-MMD); ``None`` where it is a seeded random
    subject split (UESTC).
    """

    site: str
    format: str
    path: Path
    sequences: int
    classes: int
    subjects: int
    train: int | None = None
    test: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StandinSet:
    """All stand-ins of one ``write_standins`` call and the paths file naming them."""

    root: Path
    paths_file: Path
    standins: tuple[Standin, ...]

    def by_site(self) -> dict[str, Standin]:
        return {s.site: s for s in self.standins}

    @property
    def sequences(self) -> int:
        return sum(s.sequences for s in self.standins)


# --------------------------------------------------------------------------- motions

def _motions(
    num_classes: int, num_subjects: int, views: dict[str, float], seed: int, frames: int,
    subject_offset: int = 0, noise: float = 0.01, frame_rate: float = 1.0,
) -> dict[tuple[str, int, int], np.ndarray]:
    """(view, subject index, class index) -> joints ``[T, 1, 25, 3]``, one take each."""
    domains = [
        {"name": name, "yaw": yaw, "noise_std": noise, "frame_rate_factor": frame_rate}
        for name, yaw in views.items()
    ]
    data: SkeletonDataset = generate_synthetic(
        num_classes=num_classes, num_subjects=num_subjects, samples_per_class_subject=1,
        num_frames=frames, layout="ntu25", domain=domains, seed=seed,
        subject_offset=subject_offset,
    )
    ids = sorted({s.subject for s in data.samples})
    return {(s.view, ids.index(s.subject), s.label): s.joints for s in data.samples}


def _with_partner(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two people ``[T, 2, 25, 3]``: ``second`` stands beside ``first``."""
    frames = min(len(first), len(second))
    first, second = first[:frames], second[:frames]
    shift = first.mean(axis=(0, 1, 2)) - second.mean(axis=(0, 1, 2))
    shift[1] = 0.0  # both stand on the same floor
    shift[0] += PARTNER_OFFSET
    return np.concatenate([first, second + shift.astype(np.float32)], axis=1)


def _take(motions: dict, view: str, subject: int, label: int, num_subjects: int,
          interaction: bool) -> np.ndarray:
    """One take, with the next subject's take of the same class as partner when needed."""
    joints = motions[(view, subject, label)]
    if not interaction:
        return joints
    return _with_partner(joints, motions[(view, (subject + 1) % num_subjects, label)])


def _text(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(xyz: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole image points ``[..., 2]`` of camera-space points (metres, y up)."""
    z = np.maximum(xyz[..., 2], 0.1)
    return np.stack([cx + focal * xyz[..., 0] / z, cy - focal * xyz[..., 1] / z], axis=-1)


# --------------------------------------------------------------------------- NTU-60: pyskl

def write_ntu60_pyskl(folder: Path, seed: int = 0, frames: int = 48) -> Standin:
    """NTU-60 as a pyskl ``ntu60_3danno.pkl``: 6 classes x 6 performers x 3 cameras."""
    views = {f"C{c:03d}": yaw for c, yaw in NTU_CAMERA_YAW.items()}
    motions = _motions(len(NTU60_ACTIONS), len(NTU60_PERFORMERS), views, seed, frames,
                       subject_offset=0, noise=0.01)
    annotations, train_names, test_names = [], [], []
    xview_train, xview_test = [], []
    for si, performer in enumerate(NTU60_PERFORMERS):
        setup = 1 + si % 17
        for k, action in enumerate(NTU60_ACTIONS):
            for camera in NTU_CAMERA_YAW:
                joints = _take(motions, f"C{camera:03d}", si, k, len(NTU60_PERFORMERS),
                               interaction=action >= 50)
                name = f"S{setup:03d}C{camera:03d}P{performer:03d}R001A{action:03d}"
                keypoint = np.ascontiguousarray(joints.transpose(1, 0, 2, 3), dtype=np.float32)
                annotations.append({
                    "frame_dir": name, "label": action - 1, "img_shape": (1080, 1920),
                    "original_shape": (1080, 1920), "total_frames": int(keypoint.shape[1]),
                    "keypoint": keypoint,
                })
                (train_names if performer in NTU60_XSUB_TRAIN_SUBJECTS else test_names).append(name)
                (xview_train if camera in (2, 3) else xview_test).append(name)
    doc = {
        "split": {"xsub_train": train_names, "xsub_val": test_names,
                  "xview_train": xview_train, "xview_val": xview_test},
        "annotations": annotations,
    }
    path = folder / "ntu60_3danno.pkl"
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(doc, protocol=4))
    return Standin("ntu60", "pyskl", path, len(annotations), 60, len(NTU60_PERFORMERS),
                   len(train_names), len(test_names))


# --------------------------------------------------------------------------- NTU-120: raw

def _ntu_body_block(body_id: int, joints: np.ndarray) -> list[str]:
    """A body line, the joint count and 25 joint lines of one frame."""
    depth = _project(joints, 365.0, 256.0, 212.0)
    colour = _project(joints, 1081.0, 960.0, 540.0)
    lines = [f"{body_id} 0 1 1 1 1 0 0.0 0.0 2", "25"]
    for j in range(len(joints)):
        x, y, z = joints[j]
        lines.append(
            f"{x:.7g} {y:.7g} {z:.7g} {depth[j, 0]:.4f} {depth[j, 1]:.4f} "
            f"{colour[j, 0]:.3f} {colour[j, 1]:.3f} 0 0 0 0 2"
        )
    return lines


def ntu_skeleton_text(joints: np.ndarray, first_body_id: int) -> str:
    """The ``.skeleton`` text of joints ``[T, M, 25, 3]`` (every body tracked in every frame)."""
    lines = [str(len(joints))]
    for frame in joints:
        lines.append(str(len(frame)))
        for m, body in enumerate(frame):
            lines.extend(_ntu_body_block(first_body_id + m, body))
    return _text(lines)


def write_ntu120_skeleton(folder: Path, seed: int = 0, frames: int = 48) -> Standin:
    """NTU-120 as raw ``.skeleton`` files: 6 classes x 6 performers x 2 cameras."""
    cameras = (2, 3)
    views = {f"C{c:03d}": NTU_CAMERA_YAW[c] for c in cameras}
    motions = _motions(len(NTU120_ACTIONS), len(NTU120_PERFORMERS), views, seed + 1, frames,
                       subject_offset=10, noise=0.015, frame_rate=1.2)
    target = folder / "nturgbd_skeletons_s018_to_s032"
    train = test = 0
    body_id = 72057594037927936
    for si, performer in enumerate(NTU120_PERFORMERS):
        setup = 18 + si % 15
        for k, action in enumerate(NTU120_ACTIONS):
            for camera in cameras:
                joints = _take(motions, f"C{camera:03d}", si, k, len(NTU120_PERFORMERS),
                               interaction=action >= 106)
                name = f"S{setup:03d}C{camera:03d}P{performer:03d}R002A{action:03d}.skeleton"
                _write_text(target / name, ntu_skeleton_text(joints, body_id))
                body_id += joints.shape[1]
                if performer in NTU120_XSUB_TRAIN_SUBJECTS:
                    train += 1
                else:
                    test += 1
    return Standin("ntu120", "ntu", folder, train + test, 120, len(NTU120_PERFORMERS), train, test)


# --------------------------------------------------------------------------- PKU-MMD

def _recording(takes: Sequence[np.ndarray], actions: Sequence[int], rng: np.random.Generator,
               gap: int = 8) -> tuple[np.ndarray, list[str]]:
    """One long recording ``[T, 2, 25, 3]`` of ``takes`` with idle gaps, and its label lines."""
    parts, labels, t = [], [], 0
    for joints, action in zip(takes, actions):
        two = np.zeros((len(joints), 2, 25, 3), dtype=np.float32)
        two[:, : joints.shape[1]] = joints
        idle = np.repeat(two[:1], gap, axis=0)  # standing still before the action
        parts.extend([idle, two])
        start = t + gap
        t = start + len(two)
        labels.append(f"{action},{start},{t},{int(rng.integers(1, 3))}")
    parts.append(np.repeat(parts[-1][-1:], gap, axis=0))
    return np.concatenate(parts), labels


def _split_list(train: Sequence[str], test: Sequence[str]) -> str:
    # "Validataion" as the official files spell it.
    return _text(["Training videos: ", ", ".join(train), "Validataion videos: ", ", ".join(test)])


def write_pkummd(folder: Path, part: int, seed: int = 0, frames: int = 48) -> Standin:
    """PKU-MMD part I or II: recordings of 6 action instances each, two body slots per frame.

    Part I: videos ``0002``... (one performer each), views L, M, R; part II: videos
    ``A01N01``... (performer ``N``), views L and M. Two thirds of the performers train
    under the cross-subject list; M and R train under the cross-view list.
    """
    if part not in (1, 2):
        raise ValueError(f"PKU-MMD part must be 1 or 2, not {part!r}")
    actions = PKU1_ACTIONS if part == 1 else PKU2_ACTIONS
    views = ("L", "M", "R") if part == 1 else ("L", "M")
    num_subjects = 6 if part == 1 else 5
    videos = [f"{2 + i:04d}" for i in range(num_subjects)] if part == 1 else \
        [f"A01N{i + 1:02d}" for i in range(num_subjects)]
    train_videos = set(videos[: (2 * num_subjects + 2) // 3])
    motions = _motions(len(actions), num_subjects, {v: PKU_VIEW_YAW[v] for v in views},
                       seed + 1 + part, frames, subject_offset=20 + 10 * part, noise=0.02,
                       frame_rate=0.9)
    rng = np.random.default_rng([seed, part])
    skeleton_dir = folder / "PKU_Skeleton_Renew"
    label_dir = folder / "Train_Label_PKU_final"
    xsub = {"train": [], "test": []}
    xview = {"train": [], "test": []}
    train = test = 0
    for si, video in enumerate(videos):
        order = rng.permutation(len(actions))
        for view in views:
            takes = [_take(motions, view, si, int(k), num_subjects,
                           interaction=part == 1 and k == len(actions) - 1) for k in order]
            joints, labels = _recording(takes, [actions[int(k)] for k in order], rng)
            name = f"{video}-{view}"
            buffer = io.StringIO()
            np.savetxt(buffer, joints.reshape(len(joints), -1), fmt="%.6f")
            _write_text(skeleton_dir / f"{name}.txt", buffer.getvalue())
            _write_text(label_dir / f"{name}.txt", _text(labels))
            in_train = video in train_videos
            xsub["train" if in_train else "test"].append(name)
            xview["train" if view != "L" else "test"].append(name)
            train += len(labels) if in_train else 0
            test += 0 if in_train else len(labels)
    _write_text(folder / "Split" / "cross-subject.txt", _split_list(xsub["train"], xsub["test"]))
    _write_text(folder / "Split" / "cross-view.txt", _split_list(xview["train"], xview["test"]))
    return Standin(f"pku-mmd-{part}", "pku-mmd", folder, train + test, 51 if part == 1 else 41,
                   num_subjects, train, test, options={"part": part})


# --------------------------------------------------------------------------- UESTC

def uestc_skeleton_text(joints: np.ndarray) -> str:
    """Raw UESTC text of one person ``[T, 25, 3]``: ``#``, then camera/colour/depth per joint."""
    colour = _project(joints, 1081.0, 960.0, 540.0)
    depth = _project(joints, 365.0, 256.0, 212.0)
    lines = []
    for t in range(len(joints)):
        lines.append("#")
        for j in range(joints.shape[1]):
            x, y, z = joints[t, j]
            lines.append(f"{x:.6f} {y:.6f} {z:.6f} 0")
            lines.append(f"{colour[t, j, 0]:.2f} {colour[t, j, 1]:.2f} 1")
            lines.append(f"{depth[t, j, 0]:.2f} {depth[t, j, 1]:.2f} 2")
    return _text(lines)


def write_uestc(folder: Path, seed: int = 0, frames: int = 48) -> Standin:
    """UESTC: 6 classes x 8 persons, each seen by the front (c1) and side (c2) camera.

    Person ``p`` faces direction ``d = 1 + p % 4`` (45 degrees apart), as UESTC's fixed
    views do; camera 2 sees them from 90 degrees further round.
    """
    num_subjects, per_group = 8, 2
    count = 0
    for group in range(num_subjects // per_group):
        direction = 1 + group
        yaw = 45.0 * (direction - 1)
        motions = _motions(len(UESTC_ACTIONS), per_group, {"c1": yaw, "c2": yaw + 90.0},
                           seed + 5, frames, subject_offset=60 + per_group * group, noise=0.01,
                           frame_rate=1.3)
        for si in range(per_group):
            person = 1 + group * per_group + si
            for k, action in enumerate(UESTC_ACTIONS):
                for camera in (1, 2):
                    joints = motions[(f"c{camera}", si, k)][:, 0]
                    name = f"a{action}_d{direction}_p{person:03d}_c{camera}_skeleton.txt"
                    _write_text(folder / name, uestc_skeleton_text(joints))
                    count += 1
    return Standin("uestc", "uestc", folder, count, 40, num_subjects)


# --------------------------------------------------------------------------- paths file

def paths_toml(standins: Iterable[Standin]) -> str:
    """The paths file text: one table per site with ``path``, ``format`` and ``options``."""
    lines = ["# Where each fsar-paper site's data set lives and in which format.",
             "# fedsar-sim run --scenario fsar-paper --paths THIS_FILE", ""]
    for s in standins:
        lines += [f"[{s.site}]", f"path = {toml_value(str(s.path.resolve()))}",
                  f"format = {toml_value(s.format)}"]
        if s.options:
            lines.append(f"options = {toml_value(s.options)}")
        lines.append("")
    return "\n".join(lines)


def write_paths_file(path: Path, standins: Iterable[Standin]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(paths_toml(standins))
    return path


# --------------------------------------------------------------------------- all of it

WRITERS = {
    "ntu60": lambda root, seed, frames: write_ntu60_pyskl(root / "ntu60", seed, frames),
    "ntu120": lambda root, seed, frames: write_ntu120_skeleton(root / "ntu120", seed, frames),
    "pku-mmd-1": lambda root, seed, frames: write_pkummd(root / "pku-mmd-1", 1, seed, frames),
    "pku-mmd-2": lambda root, seed, frames: write_pkummd(root / "pku-mmd-2", 2, seed, frames),
    "uestc": lambda root, seed, frames: write_uestc(root / "uestc", seed, frames),
}


def write_standins(
    out: str | Path, seed: int = 0, frames: int = 48, sites: Sequence[str] = SITES,
    replace: bool = False,
) -> StandinSet:
    """Write the stand-ins of ``sites`` under ``out`` and a ``paths.toml`` naming them.

    A stand-in folder that already exists is an error unless ``replace`` is set, in which
    case that folder (and only that one) is removed first, so that files of an earlier
    call never mix with new ones.
    """
    unknown = [s for s in sites if s not in WRITERS]
    if unknown:
        raise ValueError(f"unknown stand-in site(s) {', '.join(unknown)}; known: {', '.join(SITES)}")
    if frames < 8:
        raise ValueError(f"frames={frames}: stand-in takes need at least 8 frames")
    root = Path(out).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder")
    for site in sites:
        target = root / site
        if target.exists():
            if not replace:
                raise FileExistsError(f"{target} already exists; choose another folder or replace it")
            shutil.rmtree(target)
    root.mkdir(parents=True, exist_ok=True)
    standins = tuple(WRITERS[site](root, seed, frames) for site in sites)
    paths_file = write_paths_file(root / PATHS_FILE, standins)
    return StandinSet(root, paths_file, standins)


def check_paths(paths_file: str | Path, scenario: str = "fsar-paper") -> dict[str, tuple[int, int]]:
    """Train and test sequence counts of every site the paths file names, read as a site does.

    Each data set goes through its real reader, the scenario's layout and its split, so
    a stand-in (or a real data set) that a site could not use fails here, naming it.
    """
    from skeletons.scenario import resolve_scenario
    from skeletons.site_data import load_site

    resolved = resolve_scenario(scenario, paths_file)
    counts = {}
    for spec in resolved.sites:
        arrays = load_site(spec, None, resolved.layout, resolved.num_frames, resolved.num_persons)
        train, test = len(arrays.y_train), len(arrays.y_test)
        if not train or not test:
            raise ValueError(f"site {spec.name!r} ({spec.folder}): {train} training and {test} test "
                             f"sequences under split {spec.split}; both must be non-empty")
        counts[spec.name] = (train, test)
    return counts
