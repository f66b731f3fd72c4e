"""Preprocessing into [N, 3, T, V, M] and the on-disk cache of its results."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from skeletons.cache import cached_arrays, cached_dataset, prepare
from skeletons.datasets import load_dataset
from skeletons.layouts import KINECT_V1
from skeletons.preprocess import (
    PreprocessConfig,
    fill_missing,
    prepare_sequence,
    resample,
    to_arrays,
)
from skeletons.sample import SkeletonDataset, SkeletonSample

HC, SC = KINECT_V1.index("hip_center"), KINECT_V1.index("shoulder_center")
SL, SR = KINECT_V1.index("shoulder_left"), KINECT_V1.index("shoulder_right")
HL, HR = KINECT_V1.index("hip_left"), KINECT_V1.index("hip_right")


def body(t: int, offset=(0.0, 0.0, 3.0), torso: float = 0.5, seed: int = 0) -> np.ndarray:
    """A plausible standing body ``[T, 20, 3]`` facing the camera, swaying along x."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 0.1, (20, 3)).astype(np.float32)
    base[HC] = (0.0, 0.0, 0.0)
    base[SC] = (0.0, torso, 0.0)
    base[SL], base[SR] = (-0.2, torso, 0.0), (0.2, torso, 0.0)
    base[HL], base[HR] = (-0.1, 0.0, 0.0), (0.1, 0.0, 0.0)
    sway = np.linspace(0.0, 0.3, t, dtype=np.float32)[:, None, None] * np.array([1.0, 0.0, 0.0])
    return (base[None] + sway + np.asarray(offset, np.float32)).astype(np.float32)


def dataset_of(*sequences: np.ndarray) -> SkeletonDataset:
    samples = [SkeletonSample(j if j.ndim == 4 else j[:, None], i % 2,
                              {"dataset": "t", "subject": str(i), "view": None, "source": f"s{i}"})
               for i, j in enumerate(sequences)]
    return SkeletonDataset("t", KINECT_V1, ["a", "b"], samples)


def test_output_shape_dtype_and_labels():
    x, y = to_arrays(dataset_of(body(10), body(37), body(1)), PreprocessConfig(num_frames=16))
    assert x.shape == (3, 3, 16, 20, 1) and x.dtype == np.float32
    assert y.tolist() == [0, 1, 0] and y.dtype == np.int64


def test_centred_on_first_frame_centre_joint_and_translation_kept():
    x, _ = to_arrays(dataset_of(body(8, offset=(1.0, 2.0, 3.0))), PreprocessConfig(num_frames=8))
    np.testing.assert_allclose(x[0, :, 0, HC, 0], 0.0, atol=1e-6)
    assert x[0, 0, -1, HC, 0] > 0.1  # the sway along x survives centring


def test_scale_normalized_by_torso_length():
    cfg = PreprocessConfig(num_frames=8)
    small, _ = to_arrays(dataset_of(body(8, torso=0.3)), cfg)
    large, _ = to_arrays(dataset_of(body(8, torso=0.6)), cfg)
    for x in (small, large):
        torso = np.linalg.norm(x[0, :, :, SC, 0] - x[0, :, :, HC, 0], axis=0)
        np.testing.assert_allclose(torso, 1.0, rtol=1e-5)
    raw, _ = to_arrays(dataset_of(body(8, torso=0.6)), PreprocessConfig(num_frames=8, normalize_scale=False))
    np.testing.assert_allclose(np.linalg.norm(raw[0, :, 0, SC, 0] - raw[0, :, 0, HC, 0]), 0.6, rtol=1e-5)


def test_resample_is_linear_in_time():
    j = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 1, 20, 3), np.float32) + 1
    out, present = resample(j, np.ones((5, 1), bool), 9)
    np.testing.assert_allclose(out[:, 0, 0, 0], np.linspace(1, 5, 9), atol=1e-6)
    assert present.all()
    single, _ = resample(j[:1], np.ones((1, 1), bool), 4)
    np.testing.assert_array_equal(single, np.repeat(j[:1], 4, axis=0))


def test_nan_and_zero_joints_are_interpolated_over_time():
    j = body(5)[:, None].copy()
    expected = j[2, 0, 7].copy()
    j[2, 0, 7] = np.nan
    j[1:4, 0, 3] = 0.0  # head lost for three frames
    filled, present = fill_missing(j)
    assert present.all() and np.isfinite(filled).all()
    np.testing.assert_allclose(filled[2, 0, 7], expected, atol=1e-6)  # sway is linear
    np.testing.assert_allclose(filled[1:4, 0, 3], j[[0], 0, 3] + (j[4, 0, 3] - j[0, 0, 3])
                               * np.array([[0.25], [0.5], [0.75]]), atol=1e-6)


def test_joint_never_seen_takes_body_centroid():
    j = body(3)[:, None].copy()
    j[:, 0, 5] = np.nan
    filled, _ = fill_missing(j)
    others = np.delete(j[:, 0], 5, axis=1)
    np.testing.assert_allclose(filled[:, 0, 5], others.mean(axis=1), atol=1e-6)


def test_invalid_frames_are_dropped():
    clean = body(6)
    dirty = np.concatenate([np.zeros((2, 20, 3), np.float32), clean[:3],
                            np.full((1, 20, 3), np.nan, np.float32), clean[3:]])
    cfg = PreprocessConfig(num_frames=12)
    a, _ = to_arrays(dataset_of(clean), cfg)
    b, _ = to_arrays(dataset_of(dirty), cfg)
    np.testing.assert_allclose(a, b, atol=1e-6)
    kept, _ = to_arrays(dataset_of(dirty), PreprocessConfig(num_frames=12, drop_invalid_frames=False))
    assert np.isfinite(kept).all() and not np.allclose(kept, a, atol=1e-3)


def test_sequence_without_valid_frames_is_zeros_and_reported(caplog):
    with caplog.at_level(logging.WARNING):
        x, _ = to_arrays(dataset_of(body(4), np.zeros((5, 20, 3), np.float32)),
                         PreprocessConfig(num_frames=6))
    assert not x[1].any() and x[0].any()
    assert "1 sequence(s) have no valid frame" in caplog.text and "s1" in caplog.text


def test_persons_kept_by_presence_and_padded():
    actor, partner = body(6, seed=1), body(6, offset=(1.0, 0.0, 3.0), seed=2)
    ghost = np.zeros_like(actor)
    ghost[2] = body(1, offset=(-1.0, 0.0, 3.0), seed=3)[0]  # seen in one frame only
    j = np.stack([ghost, partner, actor], axis=1)
    out, present = prepare_sequence(j, PreprocessConfig(num_frames=6, num_persons=2))
    assert present.all()
    kept = {tuple(np.round(out[0, m, HC], 4)) for m in range(2)}
    assert kept == {tuple(np.round(actor[0, HC], 4)), tuple(np.round(partner[0, HC], 4))}
    padded, present = prepare_sequence(actor[:, None], PreprocessConfig(num_frames=6, num_persons=3))
    assert padded.shape == (6, 3, 20, 3) and present[:, 0].all() and not present[:, 1:].any()
    x, _ = to_arrays(dataset_of(actor[:, None]), PreprocessConfig(num_frames=6, num_persons=3))
    assert x[..., 0].any() and not x[..., 1:].any()  # absent bodies stay zero after centring


def test_canonical_view_faces_the_camera():
    j = body(6)
    theta = np.deg2rad(50.0)
    rot = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]],
                   np.float32)
    turned = (j - j[0, HC]) @ rot.T + j[0, HC]
    cfg = PreprocessConfig(num_frames=6, canonical_view=True)
    a, _ = to_arrays(dataset_of(j), cfg)
    b, _ = to_arrays(dataset_of(turned), cfg)
    np.testing.assert_allclose(a, b, atol=1e-5)
    across = a[0, :, 0, SR, 0] - a[0, :, 0, SL, 0]
    assert across[0] > 0 and abs(across[2]) < 1e-5  # left to right along +x, no depth
    plain, _ = to_arrays(dataset_of(turned), PreprocessConfig(num_frames=6))
    assert abs(plain[0, 2, 0, SR, 0] - plain[0, 2, 0, SL, 0]) > 0.1


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_frames"):
        PreprocessConfig(num_frames=0)


# ---------------------------------------------------------------------------------- cache

def write_msr(folder: Path, name: str, frames: np.ndarray) -> Path:
    path = folder / f"{name}_skeleton3D.txt"
    path.write_text("".join(f"{x:.6f} {y:.6f} {z:.6f} 1\n" for x, y, z in frames.reshape(-1, 3)))
    return path


@pytest.fixture()
def msr_folder(tmp_path):
    folder = tmp_path / "msr"
    folder.mkdir()
    write_msr(folder, "a01_s01_e01", body(5, seed=1))
    write_msr(folder, "a02_s02_e01", body(7, seed=2))
    return folder


def test_second_load_hits_cache(msr_folder, tmp_path):
    cache = tmp_path / "cache"
    first = prepare("msr-action3d", msr_folder, directory=cache)
    second = prepare("msr-action3d", msr_folder, directory=cache)
    assert not first.from_cache and second.from_cache
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.y, second.y)
    assert second.meta[1]["subject"] == "2" and second.classes[0] == "high arm wave"
    assert len(list(cache.glob("*.npz"))) == 2  # parsed data set + arrays


def test_touching_or_changing_a_source_invalidates(msr_folder, tmp_path):
    cache = tmp_path / "cache"
    prepare("msr-action3d", msr_folder, directory=cache)
    path = msr_folder / "a01_s01_e01_skeleton3D.txt"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not prepare("msr-action3d", msr_folder, directory=cache).from_cache
    write_msr(msr_folder, "a01_s01_e01", body(5, seed=1, torso=0.9) * 2.0)
    rebuilt = prepare("msr-action3d", msr_folder, directory=cache,
                      config=PreprocessConfig(normalize_scale=False))
    assert not rebuilt.from_cache
    fresh, _ = to_arrays(load_dataset("msr-action3d", msr_folder), PreprocessConfig(normalize_scale=False))
    np.testing.assert_array_equal(rebuilt.x, fresh)
    assert len(list(cache.glob("msr-action3d-arrays-*.npz"))) == 2  # one per config, old removed


def test_config_and_options_are_part_of_the_key(msr_folder, tmp_path):
    cache = tmp_path / "cache"
    a = prepare("msr-action3d", msr_folder, directory=cache)
    b = prepare("msr-action3d", msr_folder, PreprocessConfig(num_frames=20), directory=cache)
    c = prepare("msr-action3d", msr_folder, directory=cache, layout="kinect-v1")
    assert not b.from_cache and b.x.shape[2] == 20
    assert not c.from_cache and c.layout == "kinect-v1" and a.layout == "msr-action3d"


def test_damaged_cache_entry_is_rebuilt(msr_folder, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = prepare("msr-action3d", msr_folder, directory=cache)
    for entry in cache.glob("*-arrays-*.npz"):
        entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        again = prepare("msr-action3d", msr_folder, directory=cache)
    assert not again.from_cache and "unreadable" in caplog.text
    np.testing.assert_array_equal(first.x, again.x)


def test_cached_dataset_round_trip_and_env_dir(msr_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSAR_CACHE_DIR", str(tmp_path / "envcache"))
    bad = write_msr(msr_folder, "a03_s03_e01", body(3))
    bad.write_text(bad.read_text() + "1 2\n")
    direct = load_dataset("msr-action3d", msr_folder, on_error="skip")
    cached_dataset("msr-action3d", msr_folder, on_error="skip")
    again = cached_dataset("msr-action3d", msr_folder, on_error="skip")
    assert list((tmp_path / "envcache").glob("msr-action3d-raw-*.npz"))
    assert again.layout is direct.layout and again.classes == direct.classes
    assert [(s.path, s.reason) for s in again.skipped] == [(s.path, s.reason) for s in direct.skipped]
    for a, b in zip(direct, again):
        np.testing.assert_array_equal(a.joints, b.joints)
        assert a.label == b.label and a.meta == b.meta
    x, y, meta = cached_arrays("msr-action3d", msr_folder, on_error="skip")
    assert x.shape[0] == len(y) == len(meta) == 2
