"""The local trainer: learning, the proximal term, multi-grain distillation, augmentation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from client.augment import Augmentation, augment, rotation_matrices, temporal_crop
from client.trainer import (
    TrainConfig,
    evaluate,
    evaluate_ensemble,
    lr_factor,
    predict,
    resolve_device,
    train,
    training_loss,
)
from models import ModelConfig, build_model, split_state
from skeletons.layouts import KINECT_V1

TINY = ModelConfig(channels=(8, 8, 16, 16), strides=(1, 2, 1, 2), temporal_kernel=3, norm_groups=4)


def separable_task(n: int = 48, t: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 raises every joint over time, class 1 lowers it (plus noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    ramp = np.linspace(-1, 1, t, dtype=np.float32)
    x = rng.normal(0, 0.3, size=(n, 3, t, 20, 1)).astype(np.float32)
    x[:, 1] += np.where(y == 0, 1.0, -1.0)[:, None, None, None] * ramp[None, :, None, None]
    return x, y.astype(np.int64)


def _model(seed: int = 0, classes: int = 2):
    torch.manual_seed(seed)
    return build_model(KINECT_V1, classes, 1, TINY)


def test_loss_falls_and_task_is_learned():
    x, y = separable_task()
    model = _model()
    before = evaluate(model, (x, y), "cpu")
    config = TrainConfig(epochs=6, batch_size=8, lr=0.05, device="cpu")
    history = []
    out = train(model, (x, y), config, progress=history.append)
    after = evaluate(model, (x, y), "cpu")
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["loss"] < history[0]["loss"]
    assert after["loss"] < before["loss"]
    assert after["accuracy"] >= 0.9
    assert out["num_examples"] == len(x) and out["steps"] == 6 * 6


def test_ensemble_votes_by_mean_softmax():
    x, y = separable_task(n=32)
    a, b = _model(0, classes=3), _model(1, classes=3)
    y = np.arange(len(x)) % 3  # three classes: two untrained members disagree often
    alone = evaluate(a, (x, y), "cpu")
    one = evaluate_ensemble([a], (x, y), "cpu")
    assert one["accuracy"] == alone["accuracy"] and one["loss"] == pytest.approx(alone["loss"], rel=1e-5)
    pa = torch.from_numpy(predict(a, (x, y), "cpu")[0]).softmax(1)
    pb = torch.from_numpy(predict(b, (x, y), "cpu")[0]).softmax(1)
    assert (pa.argmax(1) != pb.argmax(1)).any()  # otherwise the vote proves nothing
    both = evaluate_ensemble([a, b], (x, y), "cpu")
    expected = float(((pa + pb).argmax(1).numpy() == y).mean())
    assert both["accuracy"] == expected
    nll = float(-((pa + pb) / 2)[torch.arange(len(y)), torch.from_numpy(y)].log().mean())
    assert both["loss"] == pytest.approx(nll, rel=1e-5)
    with pytest.raises(ValueError, match="at least one model"):
        evaluate_ensemble([], (x, y), "cpu")


def test_accepts_a_data_loader():
    x, y = separable_task(n=16)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4
    )
    out = train(_model(), loader, TrainConfig(epochs=1, device="cpu"))
    assert out["num_examples"] == 16 and out["steps"] == 4


def test_proximal_term_keeps_shared_weights_near_global():
    x, y = separable_task(n=24)
    start = _model(seed=3)
    global_shared, _ = split_state(
        {k: v.detach().clone() for k, v in start.named_parameters()}, "fsar"
    )

    def drift(mu: float) -> float:
        model = copy.deepcopy(start)
        config = TrainConfig(epochs=3, batch_size=8, lr=0.05, mu=mu, device="cpu")
        train(model, (x, y), config, global_shared=global_shared)
        params = {k: v.detach() for k, v in model.named_parameters()}
        return sum(float(((params[k] - v) ** 2).sum()) for k, v in global_shared.items())

    assert drift(10.0) < 0.5 * drift(0.0)


def test_proximal_rejects_unknown_names():
    x, y = separable_task(n=8)
    with pytest.raises(ValueError, match="lacks: nope"):
        train(_model(), (x, y), TrainConfig(mu=1.0, device="cpu"), global_shared={"nope": np.zeros(1)})


def test_mkd_loss_runs_and_gradient_does_not_reach_teacher():
    x, y = separable_task(n=8)
    student = _model(seed=1)
    teacher = _model(seed=2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = TrainConfig(grains=[1, 2], lambda_mg=1.0, lambda_kd=1.0, temperature=2.0, device="cpu")
    xb, yb = torch.from_numpy(x), torch.from_numpy(y)
    loss, logits, parts = training_loss(student, xb, yb, config, teacher)
    assert "mkd" in parts and parts["mkd"] > 0
    plain, _, _ = training_loss(student, xb, yb, config, None)
    assert float(loss) > float(plain)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.blocks[-1].gcn.conv.weight.grad is not None
    # a full training run with a teacher leaves the teacher untouched
    train(student, (x, y), TrainConfig(epochs=1, batch_size=4, grains=[1], device="cpu"), teacher=teacher)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_mkd_grain_outside_blocks_is_an_error():
    x, y = separable_task(n=8)
    with pytest.raises(ValueError, match="grains"):
        train(_model(), (x, y), TrainConfig(grains=[9], device="cpu"), teacher=_model())


def test_train_config_errors_name_the_field():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="poly")
    with pytest.raises(ValueError, match="scale"):
        TrainConfig(scale=1.5)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="tpu"):
        resolve_device("tpu")
    assert resolve_device(" CPU:0 ") == torch.device("cpu:0")
    for bad in ("mps", "cuda:x", "cuda0", ""):
        with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 100, 0, "constant") == 1.0
    assert lr_factor(90, 100, 0, "step") == pytest.approx(0.01)


def test_swa_schedule_anneals_to_the_floor_then_holds_it():
    from client.trainer import swa_lr_factor

    # 100 steps, 10 warm-up, last 20 averaged at 0.2 of the base rate
    assert swa_lr_factor(0, 100, 10, "cosine", 20, 0.2) == pytest.approx(0.1)
    assert swa_lr_factor(10, 100, 10, "cosine", 20, 0.2) == pytest.approx(1.0)
    assert swa_lr_factor(79, 100, 10, "cosine", 20, 0.2) == pytest.approx(0.2, abs=0.01)
    assert swa_lr_factor(80, 100, 10, "cosine", 20, 0.2) == 0.2
    assert swa_lr_factor(99, 100, 10, "cosine", 20, 0.2) == 0.2


def test_swa_ends_with_the_average_of_the_last_epochs_weights():
    x, y = separable_task()
    model = _model()
    snapshots = []

    def keep(record):
        if record.get("swa_models"):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    config = TrainConfig(epochs=5, batch_size=8, lr=0.05, device="cpu", swa_epochs=3, swa_lr_factor=0.5)
    history = []
    train(model, (x, y), config, progress=lambda r: (history.append(r), keep(r)))
    assert [h.get("swa_models") for h in history] == [None, None, 1, 2, 3]
    assert [h["lr"] for h in history[2:]] == pytest.approx([0.025] * 3)
    final = model.state_dict()
    for key, value in final.items():
        mean = torch.stack([s[key].float() for s in snapshots]).mean(0)
        assert torch.allclose(value.float(), mean, atol=1e-6), key
    assert not torch.equal(final["head.weight"], snapshots[-1]["head.weight"])  # not the last epoch's
    assert evaluate(model, (x, y), "cpu")["accuracy"] >= 0.9
    with pytest.raises(ValueError, match="swa_epochs must be in"):
        TrainConfig(epochs=5, swa_epochs=5)


def test_rotation_matrices_are_rotations():
    r = rotation_matrices(torch.randn(5, 3))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(5), atol=1e-5)


def test_augment_keeps_shape_and_lengths_and_changes_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 20, 20, 1)
    x[0, :, 15:] = 0  # padded sample
    out = augment(x, Augmentation(rotate=30, scale=0.2, shear=0.1, temporal_crop=0.3), gen)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    assert out[0, :, 15:].abs().max() == 0  # padding stays padding
    assert out[0, :, :15].abs().amin(dim=(0, 2, 3)).min() > 0
    # rotation alone preserves joint distances to the origin
    rot = augment(x, Augmentation(rotate=45), gen)
    assert torch.allclose(rot.norm(dim=1), x.norm(dim=1), atol=1e-4)
    assert augment(x, Augmentation(), gen) is x


def test_temporal_crop_without_cut_is_identity():
    x = torch.randn(2, 3, 10, 20, 1)
    assert torch.allclose(temporal_crop(x, 1e-9, torch.Generator().manual_seed(0)), x, atol=1e-4)


def test_trainer_runs_under_opacus_with_mkd_and_proximal_pull():
    """A private optimizer discards loss-side proximal gradients; the trainer pulls instead."""
    from opacus import PrivacyEngine

    x, y = separable_task(n=16)
    start = _model(seed=4)
    global_shared, _ = split_state(
        {k: v.detach().clone() for k, v in start.named_parameters()}, "fsar"
    )

    def drift(mu: float) -> float:
        model = copy.deepcopy(start)
        teacher = copy.deepcopy(start)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=8
        )
        config = TrainConfig(epochs=2, lr=0.1, mu=mu, grains=[1], device="cpu", schedule="constant")
        private, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=config.lr),
            data_loader=loader, noise_multiplier=0.1, max_grad_norm=1.0, poisson_sampling=False,
        )
        out = train(private, loader, config, teacher=teacher, global_shared=global_shared,
                    optimizer=optimizer)
        assert out["steps"] == 4
        params = {k: v.detach() for k, v in model.named_parameters()}
        return sum(float(((params[k] - v) ** 2).sum()) for k, v in global_shared.items())

    assert drift(5.0) < 0.5 * drift(0.0)


def test_site_scores_its_trained_model_unless_the_run_turns_it_off():
    from types import SimpleNamespace

    from flwr.app import ConfigRecord

    from client.app import _evaluate_trained

    model = _model()
    x, y = separable_task(n=12)
    data = SimpleNamespace(x_test=x, y_test=y)
    scored = _evaluate_trained(model, data, ConfigRecord({"device": "cpu"}))
    assert scored["trained-accuracy"] == pytest.approx(evaluate(model, (x, y), "cpu")["accuracy"])
    assert scored["trained-eval-seconds"] > 0
    assert _evaluate_trained(model, data, ConfigRecord({"device": "cpu", "eval-trained": False})) == {}
