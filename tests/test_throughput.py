"""``python -m simulations.throughput``: rows for presets and variants, FLOPs that follow
the model's shape (the timing itself is a benchmark, not asserted)."""

from __future__ import annotations

import pytest

from models import ModelConfig
from simulations.throughput import benchmark, main


def test_variant_rows_count_their_own_flops():
    tiny = ModelConfig(channels=(8, 8, 16, 16), strides=(1, 2, 1, 2), temporal_kernel=9, norm_groups=4)
    rows = benchmark([("full", tiny), ("multiscale", tiny.with_(temporal="multiscale"))],
                     batch_size=2, frames=16, steps=1, warmup=1, repeats=1)
    full, multi = rows
    assert [r["preset"] for r in rows] == ["full", "multiscale"]
    assert multi["forward_gflops"] < full["forward_gflops"]  # four narrow branches beat one 9x1 conv
    assert multi["params"] < full["params"] and full["train_samples_per_s"] > 0


def test_a_malformed_variant_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["--presets", "slim", "--variant", 'x={"temporal": "sideways"}'])
    assert "--variant 'x={\"temporal\": \"sideways\"}'" in capsys.readouterr().err
