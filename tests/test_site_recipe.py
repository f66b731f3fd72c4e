"""A site's own recipe (augmentation, input scaling): from the scenario or site.toml to
the site's trainer and model, and only for that site."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.site_config import SiteConfigError, load_site_config
from skeletons.scenario import ScenarioError, SiteSpec, load_scenario
from test_fsar_rounds import TINY, recorded_fsar_rounds, server_identity  # noqa: F401 (autouse fixture)
from test_site_config import SITE, site_dir, write  # noqa: F401  (fixture)

FRONT_RECIPE = '{ augment-rotate = 30, augment-axes = "xy", augment-scale = 0.2, input-range = true }'


def scenario_with_front_recipe(tmp_path: Path, recipe: str = FRONT_RECIPE) -> Path:
    text = TINY.read_text().replace(
        'split = { test_fraction = 0.25, by = "sample" }',
        f'split = {{ test_fraction = 0.25, by = "sample" }}\nrecipe = {recipe}', 1)
    path = tmp_path / "tiny-recipe.toml"
    path.write_text(text)
    return path


def test_a_site_recipe_reaches_only_its_own_site(tmp_path):
    path = scenario_with_front_recipe(tmp_path)
    assert [s.name for s in load_scenario(path).sites] == ["front", "side"]
    calls, _ = recorded_fsar_rounds(path, **{"num-server-rounds": 1, "augment-rotate": 10.0})
    front, side = calls  # one round, the sites in node order
    assert (front["config"].rotate, front["config"].rotate_axes, front["config"].scale) == (30.0, "xy", 0.2)
    assert front["input_range"] is True
    # the other site gets the run-wide rotation and its model keeps the run's input scaling
    assert (side["config"].rotate, side["config"].rotate_axes, side["config"].scale) == (10.0, "xyz", 0.0)
    assert side["input_range"] is False


def test_without_any_recipe_sites_do_not_augment():
    calls, _ = recorded_fsar_rounds(**{"num-server-rounds": 1})
    assert all(not c["config"].augmentation.active and c["input_range"] is False for c in calls)


@pytest.mark.parametrize("recipe, message", [
    ('{ augment-rotation = 30 }', "unknown key 'augment-rotation'"),
    ('{ augment-rotate = "lots" }', "augment-rotate = 'lots' is not a float"),
    ('{ input-range = 1 }', "input-range = 1 is not a bool"),
    ('{ augment-scale = 1.5 }', "augment-scale = 1.5"),
    ('{ augment-axes = "xw" }', "augment-axes = 'xw'"),
    ('{ augment-rotate = -5 }', "augment-rotate = -5"),
])
def test_a_bad_recipe_names_the_site_and_the_key(tmp_path, recipe, message):
    with pytest.raises(ScenarioError, match=r"sites\[0\]: recipe") as err:
        load_scenario(scenario_with_front_recipe(tmp_path, recipe))
    assert message in str(err.value)


def test_the_recipe_does_not_change_which_data_a_site_reads():
    plain = SiteSpec(name="a", dataset="synthetic")
    tuned = SiteSpec(name="a", dataset="synthetic", recipe={"augment-rotate": 30.0})
    assert plain.data_json() == tuned.data_json()  # same cached arrays


def test_a_deployed_site_sets_its_recipe_in_site_toml(site_dir):  # noqa: F811
    path = write(site_dir, SITE + '\n[training]\naugment-rotate = 45\naugment-axes = "y"\ninput-range = true\n')
    assert load_site_config(path).spec.recipe == {"augment-rotate": 45, "augment-axes": "y", "input-range": True}
    with pytest.raises(SiteConfigError, match=r"\[training\] has unknown field\(s\) rotate"):
        load_site_config(write(site_dir, SITE + "\n[training]\nrotate = 45\n"))
    with pytest.raises(SiteConfigError, match=r"\[training\]: augment-scale = 2"):
        load_site_config(write(site_dir, SITE + "\n[training]\naugment-scale = 2\n"))


def test_hetero_datasets_augments_only_the_cross_view_site():
    recipes = {s.name: s.recipe for s in load_scenario("hetero-datasets").sites}
    assert recipes.pop("nw-ucla") == {"augment-rotate": 60, "augment-axes": "xy", "augment-scale": 0.3,
                                      "input-range": True}
    assert all(r == {} for r in recipes.values())


def test_a_bad_run_wide_augmentation_fails_before_any_round(tmp_path):
    from simulations.run import settings_from_args
    from skeletons.clikit import UserError
    from test_sim_options import parse

    with pytest.raises(UserError, match="run config: augment-rotate = -5.0"):
        settings_from_args(parse("--set", "augment-rotate=-5"), "fsar", tmp_path)
    with pytest.raises(UserError, match="run config: augment-axes = 'up'"):
        settings_from_args(parse("--set", "augment-axes=up"), "fsar", tmp_path)
    with pytest.raises(UserError, match="run config: augment-pool = -1"):
        settings_from_args(parse("--set", "augment-pool=-1"), "fsar", tmp_path)
    settings = settings_from_args(parse("--set", "augment-rotate=20", "--set", "augment-axes=y"), "fsar", tmp_path)
    assert settings.augmentation() == {"augment-rotate": 20.0, "augment-axes": "y", "augment-scale": 0.0,
                                       "augment-multiplicity": 1, "augment-pool": 0}
