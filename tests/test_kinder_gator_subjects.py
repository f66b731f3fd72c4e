"""``kinder-gator-subjects`` on the real Kinder-Gator files: one site per participant, every
site tested on the same held-out participants, and every test motion one the site trained on.

(Each participant performed each motion about once, so a split inside a participant
would test every site on motions it never saw: 0% by construction.)
"""

from __future__ import annotations

import numpy as np
import pytest

from client.site import load_site
from conftest import dataset_dir
from skeletons.scenario import load_scenario


def test_sites_are_participants_tested_on_people_nobody_trained_on(data_root):
    dataset_dir(data_root, "kinder-gator")
    scenario = load_scenario("kinder-gator-subjects")
    assert scenario.shared_label_set and len(scenario.sites) == 16
    trained: set[str] = set()
    tested: set[str] | None = None
    for spec in scenario.sites[:3] + scenario.sites[-2:]:  # children and adults
        site = load_site(spec, str(data_root), scenario.layout, scenario.num_frames, scenario.num_persons, 0)
        assert len(set(site.subjects_train)) == 1  # one participant per site
        trained |= set(site.subjects_train)
        assert set(np.asarray(site.y_test).tolist()) <= set(np.asarray(site.y_train).tolist())
        assert len(site.classes) == 58 and len(site.y_test) > 200
        held_out = set(spec.split["test"]["subject"])
        assert tested is None or held_out == tested  # the same test participants everywhere
        tested = held_out
    assert tested and not trained & tested


def test_site_groups_write_one_site_per_value_and_name_bad_groups():
    """``[[site_groups]]`` (which writes this scenario's 16 sites) fills each value into the
    name and the split, keeps a whole-field value's type, and refuses unclear groups."""
    from skeletons.scenario import ScenarioError, scenario_from_dict

    group = {"each": {"subject": [7, 9]}, "name": "p-{subject}", "dataset": "synthetic",
             "split": {"train": {"subject": "{subject}"}, "test": {"subject": [1, 2]}}}
    scenario = scenario_from_dict({"site_groups": [group]}, "x.toml")
    assert [s.name for s in scenario.sites] == ["p-7", "p-9"]
    assert [s.split["train"]["subject"] for s in scenario.sites] == [7, 9]
    assert all(s.split["test"] == {"subject": [1, 2]} for s in scenario.sites)
    with pytest.raises(ScenarioError, match=r"site_groups\[0\].*must contain \{subject\}"):
        scenario_from_dict({"site_groups": [{**group, "name": "p"}]}, "x.toml")
    with pytest.raises(ScenarioError, match=r"\{subject\} appears only in the name"):
        scenario_from_dict({"site_groups": [{**group, "split": {"test_fraction": 0.3}}]}, "x.toml")
    with pytest.raises(ScenarioError, match="'each' must be a table with one key"):
        scenario_from_dict({"site_groups": [{**group, "each": {"subject": [1], "view": [2]}}]}, "x.toml")
    with pytest.raises(ScenarioError, match="each.subject must be a non-empty list"):
        scenario_from_dict({"site_groups": [{**group, "each": {"subject": []}}]}, "x.toml")
    with pytest.raises(ScenarioError, match=r"site_groups\[0\] \(p-7\): unknown field"):  # wrong field, named
        scenario_from_dict({"site_groups": [{**group, "splt": {}}]}, "x.toml")
