"""``fedsar-privacy anonymize`` on a real data set: what the exported file holds, and the
options it refuses rather than ignores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import dataset_dir
from privacy.cli import main


def test_a_bones_export_is_normalized_and_pseudonymous(data_root: Path, tmp_path: Path, capsys) -> None:
    dataset_dir(data_root, "msr-action3d")
    out = tmp_path / "msr.npz"
    assert main(["anonymize", "--dataset", "msr-action3d", "--data-root", str(data_root), "--out", str(out),
                 "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out": str(out), "sequences": 567, "method": "bones", "keep_ratio": None,
                       "pseudonymized": True, "attributes_kept": False}
    exported = np.load(out)
    assert exported["joints"].shape[0] == 567 and str(exported["name"]).endswith("-anonymized")
    subjects = set(exported["subjects"].tolist())
    assert len(subjects) == 10  # one pseudonym per person, none of them an original id
    assert not subjects & {f"s{i:02d}" for i in range(1, 11)} and not subjects & {str(i) for i in range(1, 11)}
    # the bone normalizer gives every person the same body: one bone's typical length is
    # the same for all ten people (raw, it differs from person to person)
    from skeletons.layouts import get_layout

    child, parent = list(get_layout(str(exported["layout"])).directed_bones)[0]
    joints, lengths = exported["joints"][:, :, 0], exported["lengths"]
    per_person = []
    for person in sorted(subjects):
        rows = np.flatnonzero(exported["subjects"] == person)
        bone = np.concatenate([np.linalg.norm(joints[i, : lengths[i], child] - joints[i, : lengths[i], parent], axis=-1)
                               for i in rows])
        per_person.append(float(np.median(bone)))
    assert max(per_person) - min(per_person) < 1e-3 * max(per_person), per_person


@pytest.mark.parametrize("extra", [["--keep-ratio", "0.5"], ["--mix", "0.9"], ["--model", "m.json"]])
def test_learned_only_options_are_refused_with_bones(data_root: Path, tmp_path: Path, capsys, extra) -> None:
    assert main(["anonymize", "--dataset", "msr-action3d", "--data-root", str(data_root),
                 "--out", str(tmp_path / "x.npz"), *extra]) == 2
    assert f"{extra[0]}: options of --method learned, not of bones" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
