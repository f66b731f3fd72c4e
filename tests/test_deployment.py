"""Deployment with real processes on loopback: a coordinator daemon (SuperLink with TLS
and site authentication) and site daemons (SuperNodes) on tiny synthetic data.

Each test starts its own federation on free ports and kills every process it started.
They are slow (a minute or two each on two busy cores), hence ``@pytest.mark.slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from privacy.keys import generate_keys
from server.control import Control
from server.loopback import LoopbackFederation, free_port
from skeletons.atomic import read_arrays

pytestmark = pytest.mark.slow
HONEST = ["site-a", "site-b", "site-c"]
TAMPERER = Path(__file__).with_name("tampering_site.py")
REFERENCE: dict[str, dict[str, np.ndarray]] = {}
ANONYMIZING = {"site-c": 'anonymize = "learned"'}  # fits its anonymizer at its first round
# The reference run and the resumed one keep AdamW's state across rounds: the resumed
# federation (a new Flower run, so an empty Context.state) must read it back from the sites' saves.
STATEFUL = {"optimizer": "adamw", "learning-rate": 0.01, "keep-optimizer-state": True}


def screening_survives_error_replies() -> bool:
    """A killed site comes back as an error reply ('node unavailable'); screening must drop
    it rather than fail on its missing content."""
    from flwr.app import Error, Message, Metadata

    from strategies.screening import site_label

    meta = Metadata(run_id=1, message_id="m", src_node_id=9, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    try:
        site_label(Message(Error(code=1, reason="node unavailable"), metadata=meta))
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.fixture()
def federation(tmp_path):
    created: list[LoopbackFederation] = []

    def make(**options) -> LoopbackFederation:
        fed = LoopbackFederation(root=tmp_path / f"fed{len(created)}", **options)
        created.append(fed)
        return fed.write()

    yield make
    for fed in created:
        fed.stop_all()


def control(fed: LoopbackFederation) -> Control:
    return Control(f"localhost:{fed.port}", fed.keys.ca_cert, timeout=10.0)


@pytest.mark.timeout(480)
def test_end_to_end_tls_authentication_and_screening(federation, tmp_path):
    fed = federation(sites=HONEST, rounds=2, min_sites=3, extra_sites=["tamperer"], name="e2e", metrics_port=free_port(),
                     site_privacy=ANONYMIZING, run=STATEFUL)
    fed.start_coordinator()
    for site in HONEST:
        fed.start_site(site)
    # The tampering script runs its SuperNode once, without the site daemon's restarts: a
    # SuperNode that finds no SuperLink, or its key not yet enrolled, exits for good.
    fed.wait_for("the coordinator to enrol the sites", lambda: "enrolled 4 sites" in fed.output("coordinator"), 120)
    fed._start("tamperer", [sys.executable, str(TAMPERER), str(fed.site_toml("tamperer"))])
    # a site whose key was never enrolled
    generate_keys(tmp_path / "rogue-keys", ["rogue"], ["localhost"])
    rogue = fed.write_site("rogue", 0, key=str(tmp_path / "rogue-keys" / "sites" / "rogue.key"))
    rogue_proc = fed.start_site("rogue", rogue)

    fed.wait_rounds(1, 300)
    with urllib.request.urlopen(f"http://127.0.0.1:{fed.metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "fedsar_rounds_completed_total 1.0" in metrics and "fedsar_sites_enrolled 4.0" in metrics
    assert 'fedsar_round_site_accuracy{site="site-a"}' in metrics and "fedsar_replies_dropped_total 1.0" in metrics

    # a SuperNode without TLS is refused by the TLS-only SuperLink
    plain = subprocess.run(
        [str(Path(sys.executable).parent / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{fed.port}",
         "--max-retries", "2", "--max-wait-time", "20", "--isolation", "process", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "FLWR_HOME": str(tmp_path / "plain")},
    )
    assert plain.returncode != 0
    assert "Failed to initialize the connection" in plain.stdout + plain.stderr
    # the unenrolled site gives up with a clear message
    assert rogue_proc.wait(240) == 3
    assert "not enrolled" in fed.output("rogue")

    with control(fed) as link:
        names = {n.name for n in link.list_nodes() if n.status == "online"}
    assert names <= set(HONEST) | {"tamperer"}  # neither the rogue nor the plain node ever joined

    assert fed.wait_coordinator_exit(420) == 0, fed.coordinator_report()
    status = fed.status()
    assert status["state"] == "completed" and status["rounds_completed"] == 2
    for record in status["rounds"]:
        assert record["sites_ok"] == 3, record
        assert any(r.startswith("tamperer: parameter") and "NaN or Inf" in r for r in record["dropped"]), record
    assert set(status["last_round"]["train"]) == set(HONEST)
    out = fed.output("coordinator")
    assert "all 4 enrolled sites connected" in out  # wait_for_sites_s: round 1 asked the tamperer too
    assert "round 2/2" in out and "tamperer" in out
    serverapp_log = (fed.state / "logs" / "serverapp.log").read_text()
    assert "dropped reply from tamperer: parameter" in serverapp_log
    assert "mean site acc" in serverapp_log  # the ServerApp logs each round's line
    from server.daemon import STATE_ENV
    from skeletons.processes import processes_marked

    assert processes_marked(STATE_ENV, str(fed.state.resolve())) == []  # no SuperExec or ServerApp outlives the coordinator
    model = read_arrays(fed.state / "run" / "global.npz")
    assert model and all(np.isfinite(a).all() for a in model.values())
    for site in HONEST:
        saves = sorted((fed.site_state(site) / "personal").glob("personal-*.npz"))
        assert saves, site
        assert any(k.startswith("optimizer-state/") for k in read_arrays(saves[-1])), site
        site_metrics = json.loads((fed.site_state(site) / "metrics.json").read_text())
        assert site_metrics["messages"] == {"train": 2, "evaluate": 2} and site_metrics["bytes_sent"] > 0
    # site-c fitted its own anonymizer in round 1, kept it on its disk and trained on its output
    assert (fed.site_state("site-c") / "anonymizer.json").is_file()
    assert not (fed.site_state("site-a") / "anonymizer.json").exists()
    REFERENCE["global"] = model


@pytest.mark.timeout(480)
def test_coordinator_killed_and_resumed_matches_uninterrupted(federation):
    fed = federation(sites=HONEST, rounds=2, min_sites=3, name="resume", site_privacy=ANONYMIZING, run=STATEFUL)
    fed.start_coordinator()
    for site in HONEST:
        fed.start_site(site)
    fed.wait_rounds(1, 300)
    fed.kill("coordinator")  # SIGKILL to the coordinator's whole process group
    status = fed.status()
    if status["rounds_completed"] != 1:
        pytest.skip(f"the coordinator finished round {status['rounds_completed']} before it could be killed")

    fed.start_coordinator(resume=True)
    assert fed.wait_coordinator_exit(360) == 0, fed.coordinator_report()
    status = fed.status()
    assert status["state"] == "completed" and status["first_round"] == 2 and status["resumed"]
    assert [r["round"] for r in status["rounds"]] == [1, 2]
    assert status["rounds"][1]["sites_ok"] == 3
    out = fed.output("coordinator")  # both coordinators': no round twice (the first may die before it reports round 1)
    assert "resuming after round 1" in out and out.count("round 1/2:") <= 1 and out.count("round 2/2:") == 1
    resumed = read_arrays(fed.state / "run" / "global.npz")

    # the next run: --new-run sets this one aside whole and starts again at round 1
    fed.start_coordinator(new_run=True)
    assert fed.wait_coordinator_exit(360) == 0, fed.coordinator_report()
    (aside,) = (fed.state / "previous").iterdir()
    assert f"set the previous run aside (checkpoints, run, status.json) in {aside}" in fed.output("coordinator")
    kept = read_arrays(aside / "run" / "global.npz")
    assert set(kept) == set(resumed) and all(np.array_equal(kept[k], resumed[k]) for k in kept)
    assert json.loads((aside / "status.json").read_text())["resumed"]
    status = fed.status()
    assert status["state"] == "completed" and status["first_round"] == 1 and not status.get("resumed")
    assert [r["round"] for r in status["rounds"]] == [1, 2] and status["rounds"][1]["sites_ok"] == 3

    if "global" not in REFERENCE:
        pytest.skip("the uninterrupted reference run did not complete")
    assert set(resumed) == set(REFERENCE["global"])
    for key, value in REFERENCE["global"].items():
        np.testing.assert_allclose(resumed[key], value, atol=1e-5, err_msg=key)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not screening_survives_error_replies(),
                    reason="strategies.screening.site_label reads the content of error replies, which have none")
def test_killed_site_is_left_out_and_rejoins(federation):
    # A short round timeout: the round that asked the killed site waits for it only this long.
    fed = federation(sites=HONEST, rounds=4, min_sites=2, name="killsite", run={"timeout-s": 120.0})
    fed.start_coordinator()
    for site in HONEST:
        fed.start_site(site)
    fed.wait_rounds(1, 300)
    fed.kill("site-c")  # mid-federation, while round 2 is being sent out

    def site_c_offline() -> bool:
        with control(fed) as link:
            return any(n.name == "site-c" and n.status == "offline" for n in link.list_nodes())

    fed.wait_for("site-c seen offline", site_c_offline, 180, poll=2.0)
    # Round 2 must end without site-c before it comes back: a site restarted earlier may pick
    # up its pending round-2 message under the same node identity and answer it late.
    fed.wait_rounds(2, 300)
    fed.start_site("site-c")
    assert fed.wait_coordinator_exit(480) == 0, fed.coordinator_report()
    status = fed.status()
    rounds = status["rounds"]
    assert status["state"] == "completed" and len(rounds) == 4
    assert rounds[0]["sites_ok"] == 3
    if rounds[1]["sites_ok"] == 3 and rounds[1]["sites_failed"] == 0:
        pytest.skip("site-c answered round 2 before it could be killed")
    # Round 2 goes on with the two live sites; if it still asked site-c, site-c counts as failed.
    assert rounds[1]["sites_ok"] == 2, rounds[1]
    assert rounds[1]["sites_failed"] == rounds[1]["sites_asked"] - 2, rounds[1]
    assert any(r["sites_ok"] == 3 for r in rounds[2:]), rounds  # site-c is back
    assert "site-c" in status["last_round"]["train"] or rounds[2]["sites_ok"] == 3


@pytest.mark.timeout(480)
def test_the_private_recipe_runs_deployed_over_grpc(federation):
    """The recipe's run-config keys in a coordinator's [run] (what ``fedsar-sim
    private-recipe`` prints): a warm start next to federation.toml, every block frozen,
    the statistics branch, group heads (the label-group query goes over the real
    SuperLink), kept optimizer state, heads started from class means and DP-SGD with the
    PRV accountant. Every site stays
    in its budget, the frozen blocks leave bit for bit as they came, and the three sites (one label
    list) average their heads."""
    from models.label_groups import is_group_key
    from server.federation import initial_arrays, model_config_for
    from server.settings import RunSettings
    from skeletons.atomic import write_arrays
    from skeletons.scenario import load_scenario
    from strategies.registry import client_policy

    recipe = {"frozen-blocks": 2, "model-overrides": '{"statistics": true}', "group-heads": True,
              "keep-optimizer-state": True, "dp-accountant": "prv", "dp-epsilon": 8.0, "dp-delta": 1e-5,
              "initial-model": "warm/global.npz", "learning-rate": 0.01, "head-start": "class-means"}
    fed = federation(sites=HONEST, rounds=2, min_sites=3, name="private", run=recipe)
    scenario = load_scenario(fed.root / "scenario.toml")
    settings = RunSettings.from_run_config({**scenario.defaults, "scenario": str(fed.root / "scenario.toml")})
    warm = initial_arrays(scenario, settings, model_config_for(scenario, settings.model_preset, {"statistics": True}),
                          client_policy("fsar", scenario.shared_label_set))
    start = {k: v.numpy() + 0.01 for k, v in warm.items()}  # not what a fresh model would hold
    write_arrays(fed.root / "warm" / "global.npz", start)
    fed.start_coordinator()
    for site in HONEST:
        fed.start_site(site)
    assert fed.wait_coordinator_exit(420) == 0, fed.coordinator_report()
    status = fed.status()
    assert status["state"] == "completed" and all(r["sites_ok"] == 3 for r in status["rounds"]), status["rounds"]
    results = json.loads((fed.state / "run" / "results.json").read_text())
    assert any(is_group_key(k) for k in results["uplink_parameters"]), "the sites shared their group's head"
    # the query before round 1 was answered: round 1 already carried the heads (without it, a
    # site of unknown group keeps its head at home until its first reply has named the group)
    first, second = results["rounds"]
    assert first["uplink_bytes"] == second["uplink_bytes"] > 0
    serverapp_log = (fed.state / "logs" / "serverapp.log").read_text()  # the ServerApp's INFO lines too
    assert "label groups: 3 of 3 sites named theirs before round 1" in serverapp_log, serverapp_log[-2000:]
    for site, spent in results["privacy"]["sites"].items():
        assert 0 < spent["epsilon"] <= 8.0 and spent["declined_rounds"] == 0, (site, spent)
    model = read_arrays(fed.state / "run" / "global.npz")
    frozen = [k for k in start if k.startswith("blocks.") and k in model]
    assert len(frozen) > 10
    for key in frozen:  # what every site sent unchanged comes back exactly, not re-averaged
        np.testing.assert_array_equal(model[key], start[key], err_msg=key)
    assert np.abs(model["statistics.proj.weight"]).sum() > 0, "the sites trained the shared projection"
    for site in HONEST:  # each site released its scale and its class means once, before any DP-SGD step
        ledger = json.loads((fed.site_state(site) / "privacy-ledger.json").read_text())
        assert [r["what"] for r in ledger["releases"]] == ["statistics scale", "class means"], (site, ledger)
    for site in HONEST:  # every message ran in a new process: the rows it reuses wait on the site's disk
        stored = list((fed.site_state(site) / "rows").glob("rows-*.npz"))
        assert stored and all(f.stat().st_mode & 0o077 == 0 for f in stored), (site, stored)
