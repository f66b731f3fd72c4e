"""``python -m privacy.dp_bench``: the DP-SGD step-cost benchmark runs every mode it
reports and, with ``--frozen-blocks``, clips and noises only what a warm-started site trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.roles import parameter_kind
from privacy import dp_bench

SMALL = '{"channels":[8,8,16,16],"strides":[1,2,1,2],"temporal_kernel":3,"norm_groups":4,"statistics":true}'


def test_frozen_blocks_leave_only_the_head_and_statistics_branch_to_train():
    model = dp_bench._model("slim", json.loads(SMALL), 5, 0, frozen_blocks=4)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and len(trained) < len(list(model.parameters()))
    assert all(parameter_kind(n) == "head" or n.startswith("statistics.") for n in trained), trained


def test_the_benchmark_times_plain_and_private_steps(tmp_path: Path):
    out = tmp_path / "bench.json"
    assert dp_bench.main(["--model-overrides", SMALL, "--frames", "8", "--batch-size", "4", "--steps", "1",
                          "--warmup", "1", "--modes", "plain,hooks", "--mkd", "--grains", "1",
                          "--frozen-blocks", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["mkd"]) for r in rows] == [("plain", False), ("hooks", False), ("plain", True), ("hooks", True)]
    assert all(r["seconds"] > 0 and r["trained_params"] < r["params"] for r in rows)
    assert all(r["vs_plain"] == 1.0 for r in rows if r["mode"] == "plain")


def test_on_cached_rows_the_benchmark_trains_the_head_alone_and_refuses_a_trainable_block(tmp_path: Path):
    out = tmp_path / "rows.json"
    args = ["--model-overrides", SMALL, "--frames", "8", "--batch-size", "4", "--steps", "1", "--warmup", "1",
            "--modes", "plain,hooks,ghost", "--mkd", "--grains", "1", "--cached-rows"]
    assert dp_bench.main(args + ["--frozen-blocks", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["plain", "hooks", "ghost", "plain", "hooks"]
    assert all("error" not in r and r["params"] == r["trained_params"] for r in rows)  # no backbone inside
    with pytest.raises(SystemExit, match="--frozen-blocks"):
        dp_bench.main(args + ["--frozen-blocks", "3"])


def test_a_mode_the_model_refuses_is_a_row_even_without_warm_up_steps(tmp_path: Path):
    out = tmp_path / "bench.json"
    assert dp_bench.main(["--model-overrides", SMALL, "--frames", "8", "--batch-size", "4", "--steps", "1",
                          "--warmup", "0", "--modes", "plain,functorch", "--out", str(out)]) == 0
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["plain"]["seconds"] > 0 and "error" in rows["functorch"]
