"""One site's state inside the ClientApp: its data, its model and its personal parameters.

The coordinator sends only shared parameters. The site merges them with the personal
ones it keeps (in ``Context.state`` during a run and, in deployment, on its own disk),
trains, and returns only the shared part again.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from skeletons.layouts import get_layout
from skeletons.scenario import SiteSpec
from skeletons.site_data import SiteArrays, load_site

log = logging.getLogger(__name__)

PERSONAL_KEY = "personal-parameters"


@dataclass
class SiteSetup:
    """Where a site's data and model description come from for this message."""

    spec: SiteSpec
    data_root: str | None
    layout: str
    num_frames: int
    num_persons: int
    model_config: dict[str, Any]
    seed: int
    state_dir: Path | None = None  # a deployed site's folder (keeps its fitted anonymizer)


def site_setup(context: Context, config: ConfigRecord) -> SiteSetup:
    """Resolve the site from the node config (deployment) or the run's site list (simulation)."""
    node = context.node_config
    if "site-config" in node:
        from client.site_config import load_site_config  # deployment sites describe themselves

        site = load_site_config(str(node["site-config"]))
        return SiteSetup(
            spec=site.spec, data_root=site.data_root, layout=str(config.get("layout", site.layout)),
            num_frames=int(config.get("num-frames", 52)), num_persons=int(config.get("num-persons", 1)),
            model_config=json.loads(str(config.get("model-config", "{}"))), seed=int(config.get("seed", 0)),
            state_dir=site.state_dir,  # spec (with its anonymize) is the site's own, not the coordinator's
        )
    specs = json.loads(str(config["site-specs"]))
    index = int(node.get("partition-id", 0))
    if index >= len(specs):
        raise ValueError(f"node partition-id {index} but the scenario has {len(specs)} sites")
    data_root = str(config.get("data-root", "")) or None
    return SiteSetup(
        spec=SiteSpec.from_dict(specs[index], f"site-specs[{index}]"),
        data_root=data_root,
        layout=str(config["layout"]),
        num_frames=int(config["num-frames"]),
        num_persons=int(config.get("num-persons", 1)),
        model_config=json.loads(str(config.get("model-config", "{}"))),
        seed=int(config.get("seed", 0)),
    )


def rows_store(setup: SiteSetup) -> Path | None:
    """Where a deployed site keeps the feature rows of its frozen backbone
    (:mod:`client.frozen_trunk`) between messages, each of which runs in a new process;
    None in simulation, where a site's process keeps them in memory."""
    return setup.state_dir / "rows" if setup.state_dir is not None else None


def raw_site_data(setup: SiteSetup) -> SiteArrays:
    """The site's arrays as loaded (memoized), before any anonymization: enough to know its
    label list without fitting an anonymizer."""
    return load_site(setup.spec, setup.data_root, setup.layout, setup.num_frames, setup.num_persons, setup.seed)


def site_data(setup: SiteSetup) -> SiteArrays:
    """The arrays the site trains and tests on: anonymized first when the site says so."""
    from privacy.site_anonymization import SiteAnonymization, protect_site

    arrays = raw_site_data(setup)
    setting = SiteAnonymization.parse(setup.spec.anonymize, f"site {setup.spec.name!r}: anonymize")
    key = json.dumps([setup.spec.data_json(), setup.data_root, setup.num_frames, setup.num_persons])
    return protect_site(arrays, setting, setup.layout, setup.seed, setup.state_dir, key=key)


def round_train_config(config: Mapping[str, Any], seed: int, site_recipe: Mapping[str, Any] | None = None):
    """A round's local training recipe from the train config the coordinator sends (or any
    mapping of the same keys), with the site's own augmentation winning; the run's
    augmented copies apply only where the site augments."""
    from client.trainer import TrainConfig
    from skeletons.scenario import site_copies

    def augment(key: str, default):
        return (site_recipe or {}).get(key, config.get(key, default))

    grains = [int(g) for g in str(config.get("grains", "")).split(",") if g.strip()]
    mkd = bool(config.get("mkd", False))
    return TrainConfig(
        epochs=int(config.get("local-epochs", 1)),
        batch_size=int(config.get("batch-size", 32)),
        lr=float(config.get("learning-rate", 0.05)),
        optimizer=str(config.get("optimizer", "sgd")),
        schedule="constant",
        rotate=float(augment("augment-rotate", 0.0)),
        rotate_axes=str(augment("augment-axes", "xyz")),
        scale=float(augment("augment-scale", 0.0)),
        augment_multiplicity=site_copies(dict(config), dict(site_recipe or {})),
        augment_pool=int(augment("augment-pool", 0)),
        grains=grains if mkd else [],
        lambda_mg=float(config.get("lambda_mg", 0.0)) if mkd else 0.0,
        lambda_kd=float(config.get("lambda_kd", 0.0)) if mkd else 0.0,
        temperature=float(config.get("temperature", 2.0)),
        mu=float(config.get("mu", config.get("proximal-mu", 0.0))),
        device=str(config.get("device", "auto")),
        seed=seed,
    )


def build_site_model(setup: SiteSetup, num_classes: int) -> torch.nn.Module:
    """The site's model, seeded from the run seed and the site name so restarts agree."""
    from models import ModelConfig, build_model

    seed = setup.seed * 1000 + sum(setup.spec.name.encode()) % 997
    torch.manual_seed(seed)
    config = site_model_config(ModelConfig(**setup.model_config) if setup.model_config else None, setup.spec.recipe)
    return build_model(get_layout(setup.layout), num_classes, setup.num_persons, config)


def site_model_config(config: Any, recipe: Mapping[str, Any]) -> Any:
    """``config`` (a ``models.ModelConfig`` or None) with the site recipe's ``input-range``
    applied: parameter-free, so a site may choose its own input scaling."""
    if "input-range" not in recipe:
        return config
    from models import ModelConfig

    return (config or ModelConfig()).with_(input_range=bool(recipe["input-range"]))


def load_parameters(model: torch.nn.Module, shared: ArrayRecord, personal: ArrayRecord | None) -> None:
    """Put the received shared and the kept personal parameters into ``model``."""
    from models.roles import merge_state

    state = model.state_dict()
    incoming = merge_state(shared.to_torch_state_dict(), personal.to_torch_state_dict() if personal else {})
    unknown = set(incoming) - set(state)
    if unknown:
        raise ValueError(f"received parameters the site's model does not have: {sorted(unknown)[:5]}")
    state.update(incoming)
    model.load_state_dict(state)


def with_group_head(
    received: ArrayRecord, personal: ArrayRecord | None, config: Mapping[str, Any], classes: list[str]
) -> tuple[ArrayRecord, ArrayRecord | None]:
    """(shared part to load, personal part) of a received global record: under
    ``group-heads`` the head that the site's label group averaged replaces its own, and
    every group's head is left out of the shared part (see models.label_groups)."""
    from models.label_groups import is_group_key, label_group, own_group

    if not any(is_group_key(k) for k in received.keys()):
        return received, personal
    plain = ArrayRecord(OrderedDict((k, v) for k, v in received.items() if not is_group_key(k)))
    head = own_group(received, label_group(classes)) if bool(config.get("group-heads", False)) else {}
    if not head:
        return plain, personal
    merged = OrderedDict(personal.items()) if personal is not None else OrderedDict()
    merged.update(head)
    return plain, ArrayRecord(merged)


def carries_group_head(received: ArrayRecord, config: Mapping[str, Any], classes: list[str]) -> bool:
    """Whether ``received`` holds the head of the site's label group (``group-heads``):
    one its peers trained, which a site that trains for the first time goes on from
    instead of starting its own."""
    from models.label_groups import label_group, own_group

    return bool(config.get("group-heads", False)) and bool(own_group(received, label_group(classes)))


def with_tagged_head(shared: ArrayRecord, personal: ArrayRecord, config: Mapping[str, Any],
                     classes: list[str]) -> ArrayRecord:
    """``shared`` plus, under ``group-heads``, the site's head tagged with its label group,
    unless the server said that no other site shares the group (then the head stays here)."""
    from models.label_groups import PEERS_KEY, label_group, tagged_heads

    if not bool(config.get("group-heads", False)) or int(config.get(PEERS_KEY, -1)) == 0:
        return shared

    return ArrayRecord(OrderedDict([*shared.items(), *tagged_heads(dict(personal.items()), label_group(classes)).items()]))


def split_parameters(
    model: torch.nn.Module, policy: str, shared_blocks: int = 0
) -> tuple[ArrayRecord, ArrayRecord]:
    """(shared, personal) ArrayRecords of ``model`` under ``policy`` (see models.roles)."""
    from models.roles import split_state

    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    shared, personal = split_state(state, policy=policy, shared_blocks=shared_blocks)
    return ArrayRecord(OrderedDict(shared)), ArrayRecord(OrderedDict(personal))


def personal_from_state(context: Context) -> ArrayRecord | None:
    return context.state.array_records.get(PERSONAL_KEY)


def keep_personal(context: Context, personal: ArrayRecord) -> None:
    context.state[PERSONAL_KEY] = personal

