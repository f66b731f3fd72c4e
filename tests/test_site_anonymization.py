"""A site that turns anonymization on trains and is tested on protected sequences only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

import client.trainer as trainer
import privacy.site_anonymization as site_anon
from client.app import evaluate, train
from client.site import SiteSetup, site_data
from inprocess_grid import InProcessGrid, coordinator_identity
from privacy.bone_normalize import normalize_bones
from privacy.site_anonymization import FITTED_MODEL, SiteAnonymization
from server.federation import run_federation
from server.settings import RunSettings
from skeletons.layouts import KINECT_V1
from skeletons.scenario import ScenarioError, SiteSpec, load_scenario, scenario_from_dict
from skeletons.site_data import load_site

TINY = Path(__file__).parent / "scenarios" / "tiny.toml"
SPEC = {"name": "ward", "dataset": "synthetic",
        "options": {"num_classes": 3, "num_subjects": 3, "samples_per_class_subject": 3, "num_frames": 16}}


@pytest.fixture(autouse=True)
def fresh_memos():
    site_anon._ARRAYS.clear()
    site_anon._MODELS.clear()
    yield
    site_anon._ARRAYS.clear()
    site_anon._MODELS.clear()


def setup_for(anonymize, state_dir: Path | None = None) -> SiteSetup:
    spec = SiteSpec.from_dict({**SPEC, "anonymize": anonymize})
    return SiteSetup(spec=spec, data_root=None, layout="kinect-v1", num_frames=16, num_persons=1,
                     model_config={}, seed=0, state_dir=state_dir)


@pytest.mark.parametrize("raw, method", [(None, "none"), (False, "none"), (True, "bones"), ("bones", "bones"),
                                         ({"method": "learned", "keep_ratio": 0.5, "mix": 0.9}, "learned")])
def test_settings_read_as_a_site_writes_them(raw, method) -> None:
    assert SiteAnonymization.parse(raw, "here").method == method


@pytest.mark.parametrize("raw, says", [
    ("blur", "method 'blur'"),
    ({"method": "bones", "model": "a.json"}, "model is given but method is 'bones'"),
    ({"method": "learned", "keep_ratio": 0}, "keep_ratio = 0.0"),
    ({"method": "learned", "mix": 1.5}, "mix = 1.5"),
    ({"method": "bones", "keep_ratio": 0.5}, "belong to the learned anonymizer"),
    ({"method": "learned", "strength": 2}, "unknown field(s) strength"),
    (3, "expected true/false"),
])
def test_bad_settings_name_the_place_and_the_value(raw, says) -> None:
    with pytest.raises(ValueError, match="sites\\[0\\]") as err:
        scenario_from_dict({"sites": [{**SPEC, "anonymize": raw}, {**SPEC, "name": "b"}]}, "s.toml")
    assert isinstance(err.value, ScenarioError) and says in str(err.value)


def test_bones_site_sees_the_canonical_body_in_both_splits_with_its_labels() -> None:
    raw = load_site(SiteSpec.from_dict(SPEC), None, "kinect-v1", 16)
    protected = site_data(setup_for("bones"))
    np.testing.assert_allclose(protected.x_train, normalize_bones(raw.x_train, KINECT_V1), atol=1e-6)
    np.testing.assert_allclose(protected.x_test, normalize_bones(raw.x_test, KINECT_V1), atol=1e-6)
    np.testing.assert_array_equal(protected.y_train, raw.y_train)
    assert not np.allclose(protected.x_train, raw.x_train)
    off = site_data(setup_for(None))
    np.testing.assert_array_equal(off.x_train, raw.x_train)


def site_toml(folder: Path, privacy: str) -> Path:
    """A deployed site's folder (keys, site.toml) whose ``[privacy]`` table is ``privacy``;
    the rest is the site of test_site_config with a little more data."""
    from privacy.keys import generate_keys
    from test_site_config import SITE

    if not (folder / "keys").exists():
        generate_keys(folder / "keys", ["clinic-1"], ["localhost"])
    head = SITE.split("[privacy]")[0].replace("samples_per_class_subject = 1, num_frames = 8",
                                              "samples_per_class_subject = 3, num_frames = 16")
    path = folder / "site.toml"
    path.write_text(head.replace("num_subjects = 2", "num_subjects = 3") + "[privacy]\n" + privacy)
    return path


@pytest.fixture()
def fits(monkeypatch) -> list[int]:
    """Anonymizer fits shrunk to seconds; the list records each fit's training size."""
    import privacy.anonymizer as anonymizer

    sizes: list[int] = []
    real_fit = anonymizer.fit_anonymizer

    def small_fit(x, actions, subjects, attributes, layout, config=None, progress=None):
        sizes.append(len(x))
        small = anonymizer.AnonymizerConfig(channels=8, blocks=1, epochs=1, adversary_hidden=8,
                                            action_teacher_epochs=2, teacher_ensemble=1, seed=config.seed)
        return real_fit(x, actions, subjects, attributes, layout, small)

    monkeypatch.setattr(anonymizer, "fit_anonymizer", small_fit)
    return sizes


def test_a_learned_site_fits_its_anonymizer_once_and_reuses_it_after_a_restart(tmp_path, fits) -> None:
    first = site_data(setup_for("learned", tmp_path))
    raw = load_site(SiteSpec.from_dict(SPEC), None, "kinect-v1", 16)
    assert fits == [len(raw.x_train)]  # fitted on the training split only
    assert (tmp_path / FITTED_MODEL).is_file()
    assert not np.allclose(first.x_train, normalize_bones(raw.x_train, KINECT_V1), atol=1e-3)
    site_anon._ARRAYS.clear()
    site_anon._MODELS.clear()  # a restarted daemon: nothing in memory, the model on disk
    again = site_data(setup_for("learned", tmp_path))
    assert fits == [len(raw.x_train)]
    np.testing.assert_array_equal(again.x_test, first.x_test)


def test_site_toml_turns_it_on_with_paths_relative_to_the_file(tmp_path) -> None:
    from client.site_config import SiteConfigError, check_site_ready, load_site_config

    path = site_toml(tmp_path, 'anonymize = "learned"\nanonymizer_model = "models/anon.json"\nkeep_ratio = 0.5\n')
    site = load_site_config(path)
    assert site.spec.anonymize == {"method": "learned", "model": str(tmp_path / "models" / "anon.json"),
                                   "keep_ratio": 0.5}
    site_toml(tmp_path, "anonymize = true\n")
    assert load_site_config(path).spec.anonymize == {"method": "bones", "keep_ratio": 1.0}
    site_toml(tmp_path, 'anonymizer_model = "anon.json"\n')
    with pytest.raises(SiteConfigError, match=r"\[privacy\] anonymize.*model is given but method is 'none'"):
        load_site_config(path)
    site_toml(tmp_path, 'anonymize = "learned"\nanonymizer_model = "missing.json"\n')
    with pytest.raises(SiteConfigError, match="anonymizer_model.*missing.json"):
        check_site_ready(load_site_config(path), load_data=False)


def test_the_federated_trainer_trains_on_the_anonymized_sequences(tmp_path) -> None:
    """Two sites over the real server loop and ClientApp functions: the one that turned
    bones on hands its trainer canonical bodies, the other its raw sequences."""
    path = tmp_path / "tiny-anon.toml"
    path.write_text(TINY.read_text().replace('name = "front"\n', 'name = "front"\nanonymize = "bones"\n', 1))
    scenario = load_scenario(path)
    assert [s.anonymize for s in scenario.sites] == ["bones", None]

    seen: list[np.ndarray] = []
    real_train = trainer.train

    def recording_train(model, data, config, **kwargs):
        seen.append(np.asarray(data[0]))  # (x, y) of the training split
        return real_train(model, data, config, **kwargs)

    def site_function(msg: Message, context: Context) -> Message:
        return (train if msg.metadata.message_type.startswith("train") else evaluate)(msg, context)

    config = {**scenario.defaults, "scenario": str(path), "strategy": "fsar", "num-server-rounds": 1,
              "local-epochs": 1, "device": "cpu"}
    grid = InProcessGrid({1: site_function, 2: site_function}, node_config=lambda nid: {"partition-id": nid - 1})
    trainer.train = recording_train
    try:
        with coordinator_identity():
            results = run_federation(grid, RunSettings.from_run_config(config))
    finally:
        trainer.train = real_train
    assert not [r.error.reason for r in grid.uplink if r.has_error()]
    assert len(seen) == 2 and results["final"]["rounds"] == 1
    assert results["sites"]["front"]["anonymize"] == {"method": "bones", "keep_ratio": 1.0}
    assert "anonymize" not in results["sites"]["side"]
    front = load_site(scenario.sites[0], None, scenario.layout, scenario.num_frames)
    side = load_site(scenario.sites[1], None, scenario.layout, scenario.num_frames)
    assert any(x.shape == front.x_train.shape and np.allclose(x, normalize_bones(front.x_train, KINECT_V1), atol=1e-6)
               for x in seen)
    assert any(x.shape == side.x_train.shape and np.array_equal(x, side.x_train) for x in seen)
    assert not any(x.shape == front.x_train.shape and np.allclose(x, front.x_train) for x in seen)


def test_a_run_wide_setting_reaches_every_site_without_its_own() -> None:
    from server.federation import with_run_anonymization

    scenario = scenario_from_dict({"sites": [{**SPEC, "anonymize": "none"}, {**SPEC, "name": "b"}]}, "s.toml")
    with_run_anonymization(scenario, "bones")
    assert [s.anonymize for s in scenario.sites] == ["none", "bones"]  # a site's own setting wins
    with pytest.raises(ValueError, match="run config: anonymize: method 'blur'"):
        with_run_anonymization(scenario, "blur")


def test_a_deployed_site_follows_its_own_site_toml_not_the_coordinators_specs(tmp_path, fits) -> None:
    from flwr.app import ConfigRecord, RecordDict

    from client.site import site_setup

    path = site_toml(tmp_path, 'anonymize = "learned"\n')
    context = Context(run_id=1, node_id=5, node_config={"site-config": str(path)}, state=RecordDict(), run_config={})
    coordinator_says = json.dumps([{**SPEC, "name": "clinic-1", "anonymize": "none"}])
    config = ConfigRecord({"site-specs": coordinator_says, "layout": "kinect-v1", "num-frames": 16, "seed": 0})
    setup = site_setup(context, config)
    assert setup.spec.anonymize == {"method": "learned", "keep_ratio": 1.0}
    data = site_data(setup)
    assert len(fits) == 1 and (tmp_path / "state" / FITTED_MODEL).is_file()
    assert data.x_train.shape[2] == 16


def test_recognizer_sites_scores_the_recognizer_a_learned_site_fits(monkeypatch) -> None:
    """``python -m privacy.recognizer_sites`` must train the very recognizer that
    ``fit_anonymizer`` puts into a site's model: same weights, hence same predictions."""
    import torch

    import privacy.anonymizer as anonymizer
    from privacy import recognizer_sites

    config = anonymizer.AnonymizerConfig(channels=8, blocks=1, epochs=1, adversary_hidden=8,
                                         action_teacher_epochs=3, teacher_ensemble=2, seed=0)
    scenario = load_scenario(TINY)
    kept = {}
    real = anonymizer.train_action_recognizer

    def keeping(layout, xn, actions, cfg, gen, seed):
        kept["net"] = real(layout, xn, actions, cfg, gen, seed)
        return kept["net"]

    monkeypatch.setattr(recognizer_sites, "train_action_recognizer", keeping)
    report = recognizer_sites.site_top1(scenario, None, config, seed=0)
    assert set(report["sites"]) == {"front", "side"} and report["recognizers"] == 2
    arrays = load_site(scenario.sites[1], None, scenario.layout, scenario.num_frames)
    subjects = np.unique(arrays.subjects_train, return_inverse=True)[1]
    model = anonymizer.fit_anonymizer(arrays.x_train, arrays.y_train, subjects, {}, KINECT_V1, config)
    for mine, theirs in zip(kept["net"].state_dict().values(), model.teacher.state_dict().values()):
        torch.testing.assert_close(mine, theirs)
    assert 0.0 <= report["sites"]["side"]["top1"] <= 1.0


def test_a_simulated_site_fits_once_for_every_keep_ratio_and_mix(fits) -> None:
    """Keep ratio and mix are deployment knobs of one fitted model: changing them re-applies
    the model, it does not fit another (a simulated site has no state folder to reload from)."""
    full = site_data(setup_for("learned"))
    half = site_data(setup_for({"method": "learned", "keep_ratio": 0.5, "mix": 0.9}))
    assert len(fits) == 1
    assert not np.allclose(full.x_train, half.x_train)


def test_the_raw_arrays_are_loaded_once_whatever_the_site_does_to_them() -> None:
    raw = load_site(SiteSpec.from_dict(SPEC), None, "kinect-v1", 16)
    assert load_site(SiteSpec.from_dict({**SPEC, "anonymize": "bones"}), None, "kinect-v1", 16) is raw
