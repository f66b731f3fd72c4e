"""The site's Flower ``ClientApp``: train on local data, return only shared parameters.

``train``: merge the received shared parameters with the site's personal ones, train
locally with the strategy's recipe (multi-grain distillation from the received global
model, proximal term), keep the personal part, reply with the shared part and metrics.
``evaluate``: the site's personalized model on its own test split.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.frozen_trunk import evaluate_site, head_only_inputs
from client.global_mix import blend_towards_global, keep_own_shared, own_shared
from client.metrics import record_exchange
from client.optimizer_state import OptimizerKeeper, keeps_state, saved_state
from client.personal_phase import fit_personal, shared_only
from client.personal_store import load_personal, save_personal
from client.site import (
    build_site_model,
    carries_group_head,
    keep_personal,
    load_parameters,
    personal_from_state,
    raw_site_data,
    round_train_config,
    rows_store,
    site_data,
    site_setup,
    split_parameters,
    with_group_head,
    with_tagged_head,
)
from models.roles import check_global_mix, freeze_blocks
from privacy.central import clipping_when_requested
from privacy.secagg import secaggplus_when_requested

log = logging.getLogger(__name__)
# Set by fedsar-sim for the sites it runs as Ray actors, which inherit its environment:
# their Flower logger then stays as quiet as the simulation's own (no per-stage SecAgg+ lines).
ACTOR_FLWR_LOG_LEVEL = "FEDSAR_SIM_FLWR_LOG_LEVEL"


class _WithoutActorShutdownNotice(logging.Filter):
    """Drops Flower's "Manually terminating ClientAppActor" warning, and nothing else: the
    simulation engine stops every site's actor that way at the end of every run, so it is
    no news, and it would end each quiet ``fedsar-sim run`` with one warning per actor."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Manually terminating %s" and record.args == ("ClientAppActor",))


if os.environ.get(ACTOR_FLWR_LOG_LEVEL):
    logging.getLogger("flwr").setLevel(os.environ[ACTOR_FLWR_LOG_LEVEL])
    logging.getLogger("flwr").addFilter(_WithoutActorShutdownNotice())

app = ClientApp()


def _unless_own_model(received: ArrayRecord, personal: ArrayRecord | None, policy: str) -> ArrayRecord:
    """What to load of ``received``: under ``local`` a site that already holds its own
    model ignores a start model sent again (e.g. to a restarted site under a new node id)."""
    if policy == "local" and personal is not None and len(personal):
        return ArrayRecord()
    return received


def _site_record(name: str, config: ConfigRecord, classes: list[str]) -> ConfigRecord:
    """Who answers: the site's name and, under ``group-heads``, its label group."""
    if not bool(config.get("group-heads", False)):
        return ConfigRecord({"site-name": name})
    from models.label_groups import SITE_KEY, label_group

    return ConfigRecord({"site-name": name, SITE_KEY: label_group(classes)})


@app.train(mods=[secaggplus_when_requested, clipping_when_requested])  # no-ops unless the run asks
def train(msg: Message, context: Context) -> Message:
    """One round of local training."""
    from client.trainer import train as train_model

    config = msg.content["config"]
    setup = site_setup(context, config)
    data = site_data(setup)
    policy = str(config.get("policy", "fsar"))
    server_round = int(config.get("server-round", 0))

    model = build_site_model(setup, data.num_classes)
    received = msg.content["arrays"]
    personal = personal_from_state(context)
    if personal is None:  # a deployed site after a restart or in a resumed federation
        personal = load_personal(context, config)
    received = _unless_own_model(received, personal, policy)
    group_head = carries_group_head(received, config, data.classes)
    received, personal = with_group_head(received, personal, config, data.classes)
    load_parameters(model, received, personal)
    global_shared = {k: v.clone() for k, v in received.to_torch_state_dict().items()}

    from client.trainer import make_optimizer
    from privacy.dp import BudgetExhausted, check_personal_epochs, dp_requested, fit_statistics_scale, train_site

    shared_blocks = int(config.get("shared-blocks", 0))
    scale_fitted = None
    try:  # the statistics branch's scale and (head-start) the head, once per site; under DP releases the ledger counts
        scale_fitted = fit_statistics_scale(context, config, setup.spec.name, model, data.x_train)
        # a site's first training starts its head from class means, unless its label group already trained one
        if scale_fitted is not None and str(config.get("head-start", "random")) == "class-means" and not group_head:
            from privacy.class_means import start_head_from_class_means

            start_head_from_class_means(context, config, setup.spec.name, model, data.x_train, data.y_train)
    except BudgetExhausted as stop:
        if scale_fitted == "dp":  # paid for: keep it, or the next round would release it again
            _keep_released_scale(context, config, model, policy, shared_blocks)
        return _declined(msg, context, received, setup.spec.name, stop)

    recipe = round_train_config(config, seed=setup.seed + server_round, site_recipe=setup.spec.recipe)
    personal_epochs = int(config.get("personal-epochs", 0))
    frozen_blocks = int(config.get("frozen-blocks", 0))
    freeze_blocks(model, frozen_blocks)  # the warm start's features stay as received (the model is built each round)
    started = time.perf_counter()
    if personal_epochs > 0:
        check_personal_epochs(personal_epochs, dp_requested(context, config))  # the site's own DP too
        fit_personal(model, (data.x_train, data.y_train), recipe, personal_epochs, policy, shared_blocks,
                     train_model)
    teacher = None
    if recipe.grains and server_round > 1:  # round 1's "global" model is untrained
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    mix = check_global_mix(float(config.get("global-mix", 1.0)), personal_epochs)
    own = own_shared(context)
    if mix < 1 and own is not None and policy != "local":  # after the teacher: it stays the global model
        blend_towards_global(model, global_shared, own, mix)

    keep_state = keeps_state(config)
    keeper = OptimizerKeeper(make_optimizer, saved_state(context) if keep_state else None)
    store = rows_store(setup)
    with shared_only(model, policy, shared_blocks) if personal_epochs > 0 else nullcontext():
        # with every block frozen the head trains on rows the backbone computes once
        learner, learner_teacher, inputs, learner_shared = head_only_inputs(
            model, teacher, recipe, data.x_train, global_shared if recipe.mu > 0 else None,
            pool_seed=setup.seed, store=store)
        try:  # DP-SGD under the site's budget when its settings or the run config ask for it
            metrics, privacy_metrics = train_site(
                context, config, setup.spec.name, learner, (inputs, data.y_train), recipe,
                train_fn=train_model, optimizer_fn=keeper,
                teacher=learner_teacher, global_shared=learner_shared,
            )
        except BudgetExhausted as stop:
            if scale_fitted == "dp":  # paid for: keep it, or the next round would release it again
                _keep_released_scale(context, config, model, policy, shared_blocks)
            return _declined(msg, context, received, setup.spec.name, stop)
    kept_state = keeper.keep(context) if keep_state else None
    if privacy_metrics["privacy-dp"]:
        from client.metrics import record_privacy_spent

        record_privacy_spent(setup.spec.name, privacy_metrics["privacy-epsilon"])
    seconds = time.perf_counter() - started
    trained = _evaluate_trained(model, data, config, store)

    shared, personal = split_parameters(model, policy, shared_blocks)
    keep_personal(context, personal)
    sent = with_tagged_head(shared, personal, config, data.classes)
    if mix < 1:
        keep_own_shared(context, shared)
    save_personal(context, config, personal, own=shared if mix < 1 else None, optimizer=kept_state)
    reply = RecordDict({
        "arrays": sent,
        "metrics": MetricRecord({
            "num-examples": int(len(data.y_train)),
            "train-loss": float(metrics["loss"]),
            "train-accuracy": float(metrics["accuracy"]),
            "train-seconds": float(seconds),
            **trained,
            **privacy_metrics,
        }),
        "site": _site_record(setup.spec.name, config, data.classes),
    })
    answer = Message(reply, reply_to=msg)
    record_exchange(context, "train", msg, answer)
    return answer


def _evaluate_trained(model: torch.nn.Module, data, config: ConfigRecord,
                      store: Path | None = None) -> dict[str, float]:
    """Test-split accuracy of the model the site holds right after its local training.

    This is the site's personalized model before the coordinator averages anything: the
    model a site would deploy under personalized federated learning. The ``evaluate``
    step measures the other candidate, the new global shared part with the site's
    personal part. Off when the run config sets ``eval-trained`` to false.
    """
    if not bool(config.get("eval-trained", True)) or len(data.y_test) == 0:
        return {}
    started = time.perf_counter()
    result = evaluate_site(model, data.x_test, data.y_test, config, store)
    return {
        "trained-accuracy": float(result["accuracy"]),
        "trained-loss": float(result["loss"]),
        "trained-eval-seconds": time.perf_counter() - started,
    }


def _keep_released_scale(context: Context, config: ConfigRecord, model: torch.nn.Module, policy: str,
                         shared_blocks: int) -> None:
    """Keep the personal part as received, with the statistics scale the site released
    this round, when the round then declines: the release is in the ledger, and a site
    that dropped the scale would pay for a second one in its next round."""
    _, personal = split_parameters(model, policy, shared_blocks)
    keep_personal(context, personal)
    save_personal(context, config, personal, own=own_shared(context), optimizer=saved_state(context))


def _declined(msg: Message, context: Context, received: ArrayRecord, site: str, stop) -> Message:
    """The reply of a site that declines a round (its privacy budget would be exceeded):
    no examples, the same metric keys as any reply, the reason in the site record."""
    reply = RecordDict({
        "arrays": received,
        "metrics": MetricRecord({
            "num-examples": 0, "train-loss": 0.0, "train-accuracy": 0.0, "train-seconds": 0.0, **stop.metrics,
        }),
        "site": ConfigRecord({"site-name": site, "declined": stop.reason}),
    })
    answer = Message(reply, reply_to=msg)
    record_exchange(context, "train", msg, answer)
    return answer


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who the site is, asked before round 1: its name and, under ``group-heads``, its
    label group, so that the coordinator can tell a site alone with its label list to
    keep its head at home from round 1 on."""
    config = msg.content["config"]
    setup = site_setup(context, config)
    classes = raw_site_data(setup).classes  # anonymization keeps the labels: nothing to fit here
    return Message(RecordDict({"site": _site_record(setup.spec.name, config, classes)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the site's personalized model (global shared + own personal) on its test split."""
    config = msg.content["config"]
    setup = site_setup(context, config)
    data = site_data(setup)
    model = build_site_model(setup, data.num_classes)
    personal = personal_from_state(context)
    if personal is None:
        personal = load_personal(context, config, evaluating=True)
    received = _unless_own_model(msg.content["arrays"], personal, str(config.get("policy", "fsar")))
    received, personal = with_group_head(received, personal, config, data.classes)
    load_parameters(model, received, personal)
    result = evaluate_site(model, data.x_test, data.y_test, config, rows_store(setup))
    reply = RecordDict({
        "metrics": MetricRecord({
            "num-examples": int(len(data.y_test)),
            "eval-loss": float(result["loss"]),
            "eval-accuracy": float(result["accuracy"]),
        }),
        "site": _site_record(setup.spec.name, config, data.classes),
    })
    answer = Message(reply, reply_to=msg)
    record_exchange(context, "evaluate", msg, answer)
    return answer
