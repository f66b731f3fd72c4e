"""The table ``fedsar-sim run`` prints at the end of a run."""

from __future__ import annotations

from simulations.report import site_table


def results(privacy: dict | None) -> dict:
    sites = {name: {"final_accuracy": acc, "trained_accuracy": acc + 0.1}
             for name, acc in (("clinic", 0.5), ("factory", 0.25), ("lab", 0.75))}
    return {"sites": sites, "final": {"mean_accuracy": 0.5, "mean_trained_accuracy": 0.6}, "privacy": privacy}


def test_without_dp_the_table_has_no_epsilon_column():
    table = site_table(results(None)).splitlines()
    assert table[0] == "| site | final top-1 (global + personal) | after local training |"
    assert table[2] == "| clinic | 50.0% | 60.0% |" and table[-1] == "| **mean** | **50.0%** | **60.0%** |"
    plain = {"sites": {"clinic": {"epsilon": 0.0, "dp": 0.0, "declined_rounds": 0}}, "central_dp": None}
    assert "epsilon" not in site_table(results(plain))


def test_under_dp_sgd_each_site_shows_what_it_spent_and_declined():
    privacy = {
        "sites": {
            "clinic": {"epsilon": 7.9928, "dp": 1.0, "declined_rounds": 0},
            "factory": {"epsilon": 2.996, "dp": 1.0, "declined_rounds": 2},
            "lab": {"epsilon": 0.0, "dp": 0.0, "declined_rounds": 0},  # trains without DP-SGD
        },
        "central_dp": None,
    }
    table = site_table(results(privacy)).splitlines()
    assert table[0].endswith("| after local training | epsilon spent |") and table[1] == "|---|---:|---:|---:|"
    assert table[2] == "| clinic | 50.0% | 60.0% | 7.99 |"
    assert table[3] == "| factory | 25.0% | 35.0% | 3.00 (2 rounds declined) |"
    assert table[4] == "| lab | 75.0% | 85.0% | no DP |"
    assert table[5] == "| **mean** | **50.0%** | **60.0%** | |"
    del privacy["sites"]["lab"]  # a site that never replied has nothing to show
    assert site_table(results(privacy)).splitlines()[4] == "| lab | 75.0% | 85.0% | - |"


def test_central_dp_adds_its_epsilon_under_the_table():
    # the record as privacy.central writes it: one entry per release
    release = {"round": 1, "sampled": 4, "contributors": 4, "noise_multiplier": 1.0, "epsilon": 1.0}
    central = {"mechanism": "central-gaussian", "noise_multiplier": 1.0, "clipping_norm": 1.0,
               "delta": 1e-5, "epsilon": 21.437, "releases": [release] * 12}
    table = site_table(results({"sites": {}, "central_dp": central}))
    assert table.endswith("\n\ncentral DP: epsilon 21.44 at delta 1e-05 after 12 releases")
    central["releases"] = [release]
    assert site_table(results({"sites": {}, "central_dp": central})).endswith("after 1 release")


def test_the_last_progress_line_and_the_table_print_the_same_mean():
    """Four sites at 87.5, 70, 85 and 92.5%: a plain float sum puts the mean just under
    83.75 (printed 83.7), the exact mean results.json keeps is just over it (83.8)."""
    import statistics

    from strategies.screening import RoundRecord

    trained = {"a": 0.875, "b": 0.7, "c": 0.85, "d": 0.925}
    record = RoundRecord(round=12, train={k: {"trained-accuracy": v} for k, v in trained.items()},
                         evaluate={k: {"eval-accuracy": 0.9} for k in trained})
    line = record.progress_line(12)
    table_mean = f"{100 * statistics.fmean(trained.values()):.1f}"
    assert table_mean == "83.8" and f"(after local training  {table_mean}%)" in line
    assert line.startswith("round  12/12  mean site acc  90.0%")
