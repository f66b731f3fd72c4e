"""The privacy ledger composes every round into one accountant and survives restarts."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict
from opacus.accountants import PRVAccountant, RDPAccountant

from privacy.ledger import (
    ContextStore,
    FileStore,
    LedgerError,
    MirroredStore,
    PrivacyLedger,
    load,
    read_ledger,
    save,
    transaction,
)

DELTA = 1e-5


def spend_rounds(store, rounds, z=1.1, q=0.05, steps=20, mechanism="rdp", run="run-1", first=1):
    for r in range(first, first + rounds):
        with transaction(store, site="a", mechanism=mechanism, delta=DELTA) as ledger:
            ledger.reserve(run, r, z, q, steps, max_grad_norm=1.0)
        with transaction(store, site="a", mechanism=mechanism, delta=DELTA) as ledger:
            ledger.settle(run, r, steps)


def one_accountant(cls, rounds, z=1.1, q=0.05, steps=20):
    """What a single Opacus accountant says after stepping through all rounds at once."""
    accountant = cls()
    for _ in range(rounds * steps):
        accountant.step(noise_multiplier=z, sample_rate=q)
    return accountant.get_epsilon(delta=DELTA)


@pytest.mark.parametrize("mechanism, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_after_rounds_equals_one_accountant(tmp_path, mechanism, cls):
    store = FileStore(tmp_path / "ledger.json")
    spend_rounds(store, 4, mechanism=mechanism)
    ledger = load(store, mechanism=mechanism, delta=DELTA)
    assert ledger.steps == 80
    assert ledger.epsilon() == pytest.approx(one_accountant(cls, 4), rel=1e-9)
    # per-round composition is not a per-round reset: 4 rounds cost more than 1
    assert ledger.epsilon() > 1.5 * one_accountant(cls, 1)


def test_ledger_survives_a_restart_and_keeps_composing(tmp_path):
    path = tmp_path / "site" / "ledger.json"
    spend_rounds(FileStore(path), 2)
    before = read_ledger(path).epsilon()
    # a new process: nothing in memory, only the file
    reopened = load(FileStore(path), site="a", delta=DELTA)
    assert reopened.epsilon() == pytest.approx(before, rel=1e-12)
    assert [r["round"] for r in reopened.rounds] == [1, 2]
    spend_rounds(FileStore(path), 1, first=3)
    assert read_ledger(path).epsilon() == pytest.approx(one_accountant(RDPAccountant, 3), rel=1e-9)
    assert not list(path.parent.glob(".ledger.json.*.tmp")), "temporary files left behind"


def test_a_crash_during_a_round_keeps_the_reservation(tmp_path):
    store = FileStore(tmp_path / "ledger.json")
    with transaction(store, delta=DELTA) as ledger:
        ledger.reserve("run-1", 1, 1.1, 0.05, 20, max_grad_norm=1.0)
    # the process dies before settling: the steps still count
    ledger = load(store, delta=DELTA)
    assert ledger.rounds[0]["status"] == "reserved"
    assert ledger.epsilon() == pytest.approx(one_accountant(RDPAccountant, 1), rel=1e-9)


def test_fewer_steps_keep_the_reservation_more_steps_are_added(tmp_path):
    store = FileStore(tmp_path / "ledger.json")
    with transaction(store, delta=DELTA) as ledger:
        ledger.reserve("r", 1, 1.1, 0.05, 20, max_grad_norm=1.0)
        ledger.settle("r", 1, 15)
        assert ledger.steps == 20
        ledger.reserve("r", 2, 1.1, 0.05, 20, max_grad_norm=1.0)
        ledger.settle("r", 2, 23)
        assert ledger.steps == 43


def test_context_store_round_trip_and_mirror(tmp_path):
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    in_state = ContextStore(context)
    spend_rounds(MirroredStore(FileStore(tmp_path / "l.json"), in_state), 2)
    from_state = PrivacyLedger.from_json(in_state.read())
    from_disk = read_ledger(tmp_path / "l.json")
    assert from_state.epsilon() == pytest.approx(from_disk.epsilon()) and from_state.steps == 40
    # simulation without a disk: the state alone carries the ledger between rounds
    context2 = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    spend_rounds(ContextStore(context2), 3)
    assert load(ContextStore(context2), delta=DELTA).epsilon() == pytest.approx(one_accountant(RDPAccountant, 3), rel=1e-9)


def test_bad_ledger_files_name_the_file_and_field(tmp_path):
    path = tmp_path / "ledger.json"
    save(FileStore(path), PrivacyLedger(delta=DELTA, history=[(1.0, 0.1, 5)]))
    doc = json.loads(path.read_text())
    doc["accountant"]["history"][0][1] = 1.5
    path.write_text(json.dumps(doc))
    with pytest.raises(LedgerError, match=r"ledger.json.*accountant.history\[0\]"):
        read_ledger(path)
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="ledger.json: not JSON"):
        read_ledger(path)
    with pytest.raises(LedgerError, match="no privacy ledger"):
        read_ledger(tmp_path / "missing.json")


def test_switching_accountant_on_an_existing_ledger_is_refused(tmp_path):
    store = FileStore(tmp_path / "ledger.json")
    spend_rounds(store, 1)
    with pytest.raises(LedgerError, match="'rdp' accountant.*'prv'"):
        load(store, mechanism="prv")


def test_budget_command_shows_and_checks_the_ledger(tmp_path, capsys):
    from privacy.cli import main

    state = tmp_path / "state"
    site_toml = tmp_path / "site.toml"
    site_toml.write_text(
        '[site]\nname = "clinic-a"\nstate_dir = "state"\n'
        '[coordinator]\naddress = "127.0.0.1:9092"\nca_certificate = "ca.pem"\n'
        '[keys]\nprivate_key = "site.key"\n[data]\ndataset = "synthetic"\n'
        '[privacy]\nepsilon = 3.0\n'
    )
    store = FileStore(state / "privacy-ledger.json")
    spend_rounds(store, 2, z=1.0, q=0.1, steps=30)
    with transaction(store, delta=DELTA) as ledger:
        ledger.plan = {"run": "run-1", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps_per_round": 30}
    spent = read_ledger(state / "privacy-ledger.json").epsilon()

    assert main(["budget", "--site", str(site_toml)]) == 0
    out = capsys.readouterr().out
    assert f"epsilon {spent:.4f} over 60 DP-SGD steps in 2 rounds" in out and "budget     epsilon 3" in out

    assert main(["budget", "--ledger", str(state / "privacy-ledger.json"), "--json", "--check"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["epsilon"] == pytest.approx(spent) and doc["target_epsilon"] is None and doc["steps"] == 60

    # with the site's budget of 3, one more planned round would go past it
    assert main(["budget", "--site", str(site_toml), "--check"]) == 1
    out = capsys.readouterr().out
    assert "would exceed the budget: the site declines the rest of run run-1" in out
    assert "a new run" not in out  # nothing left for one: it spent 6.3 before the budget of 3 was set
    site_toml.write_text(site_toml.read_text().replace("epsilon = 3.0", "epsilon = 7.0"))
    assert main(["budget", "--site", str(site_toml), "--check"]) == 1  # 6.3 now, over 7 after one more round
    assert f"a new run  spreads the {7.0 - spent:.4g} left over its rounds" in capsys.readouterr().out
    # once run-1 has had its 2 planned rounds there is no next round of it to show
    with transaction(store, delta=DELTA) as ledger:
        ledger.plan = {**ledger.plan, "rounds": 2}
    assert main(["budget", "--site", str(site_toml), "--check"]) == 0  # 0.7 left for a new run
    out = capsys.readouterr().out
    assert "run run-1 has had all its 2 rounds" in out and "next round" not in out
    assert f"a new run  spreads the {7.0 - spent:.4g} left over its rounds" in out
    assert main(["budget", "--ledger", str(state / "privacy-ledger.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run_finished"] is True and doc["next_round"] is None
    # a new run as long as run-1 spreads the 0.7 left: a bound on the noise can make the site decline it
    assert main(["budget", "--site", str(site_toml), "--json"]) == 0
    new_run = json.loads(capsys.readouterr().out)["new_run"]
    assert new_run["rounds"] == 2 and new_run["noise_multiplier"] > 1.0 and not new_run["declined"]
    site_toml.write_text(site_toml.read_text().replace("epsilon = 7.0", "epsilon = 7.0\nmax_noise_multiplier = 1.0"))
    assert main(["budget", "--site", str(site_toml), "--check"]) == 1
    assert "above max_noise_multiplier 1: the site would decline it" in capsys.readouterr().out
    site_toml.write_text(site_toml.read_text().replace("max_noise_multiplier = 1.0", "max_noise_multiplier = 1000.0"))
    assert main(["budget", "--site", str(site_toml), "--check"]) == 0
    assert "and the site would train it" in capsys.readouterr().out
    with transaction(store, delta=DELTA) as ledger:
        ledger.plan = {**ledger.plan, "rounds": 3}  # one round of run-1 still to come
    assert main(["budget", "--site", str(site_toml), "--check"]) == 1
    assert "next round epsilon" in capsys.readouterr().out
    assert main(["budget", "--ledger", str(tmp_path / "none.json")]) == 2
    assert "no privacy ledger" in capsys.readouterr().err

    # another --delta shows the spending there; the budget stays an epsilon at the ledger's delta
    assert main(["budget", "--site", str(site_toml), "--json"]) == 0
    at_own = json.loads(capsys.readouterr().out)
    assert main(["budget", "--site", str(site_toml), "--json", "--delta", "1e-3"]) == 0
    at_other = json.loads(capsys.readouterr().out)
    assert at_other["epsilon"] < at_own["epsilon"] and at_other["remaining"] == at_own["remaining"]
    assert main(["budget", "--site", str(site_toml), "--delta", "1e-3"]) == 0
    assert f"budget     epsilon 7 at delta {DELTA:g}, remaining {at_own['remaining']:.4f}" in capsys.readouterr().out

    # a site that has not trained with DP-SGD yet has its whole budget and can take part
    (state / "privacy-ledger.json").rename(state / "kept.json")
    assert main(["budget", "--site", str(site_toml), "--check"]) == 0
    assert "has not trained with DP-SGD; its budget, epsilon 7, is untouched" in capsys.readouterr().out
