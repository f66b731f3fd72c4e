"""Round checkpoints and resume: a resumed run continues exactly where the crashed one
stopped (global model, FedAvgM momentum, history); status, metrics and config files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from prometheus_client import CollectorRegistry, generate_latest

from server.checkpoint import CheckpointError, DeploymentHooks, RoundCheckpoints
from server.federation_config import FederationConfigError, load_federation_config
from server.metrics import CoordinatorCollector, record_privacy_spent
from server.settings import RunSettings
from server.status import format_status, read_status
from strategies.registry import StrategyOptions, build_strategy

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"
SITES = (11, 12, 13)


@pytest.fixture(autouse=True)
def task_identity():
    """Strategies build messages, which Flower stamps with the running task's run id."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeGrid:
    """Just enough of a Grid for a strategy to sample nodes."""

    def get_node_ids(self):
        return list(SITES)


def start_arrays() -> ArrayRecord:
    return ArrayRecord(OrderedDict(w=Array(np.zeros((2, 3), np.float32)), b=Array(np.ones(3, np.float32))))


def site_update(global_arrays: ArrayRecord, node: int, server_round: int) -> ArrayRecord:
    """What site ``node`` sends back in ``server_round``: a deterministic step from the global model."""
    rng = np.random.default_rng([node, server_round])
    return ArrayRecord(OrderedDict(
        (k, Array((v.numpy() + rng.normal(0, 0.1, v.numpy().shape)).astype(np.float32))) for k, v in global_arrays.items()
    ))


def reply(arrays: ArrayRecord, node: int, kind: str = "train", loss: float = 0.5) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 10 * node, "train-loss": loss, "train-seconds": 0.1,
                                                   "trained-accuracy": 0.4 + node / 100}),
                          "site": ConfigRecord({"site-name": f"site-{node}"})})
    if kind == "train":
        content["arrays"] = arrays
    else:
        content["metrics"] = MetricRecord({"num-examples": 5, "eval-loss": loss, "eval-accuracy": 0.5 + node / 100})
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type=kind)
    return Message(content=content, metadata=meta)


def make_strategy(momentum: float = 0.9):
    options = StrategyOptions(server_momentum=momentum, shared_label_set=True)
    return build_strategy("fsar", options, eval_every=1, num_rounds=4, num_sites=len(SITES))


def play_round(strategy, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
    grid = FakeGrid()
    list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    new, _ = strategy.aggregate_train(server_round, [reply(site_update(arrays, n, server_round), n) for n in SITES])
    strategy.configure_evaluate(server_round, new, ConfigRecord(), grid)
    strategy.aggregate_evaluate(server_round, [reply(new, n, "evaluate") for n in SITES])
    return new


def settings_for(folder: Path, resume: bool, **changes) -> RunSettings:
    run = {"strategy": "fsar", "server-momentum": 0.9, "num-server-rounds": 4, "federation": "fed",
           "checkpoint-dir": str(folder / "checkpoints"), "status-file": str(folder / "status.json"),
           "resume": resume, **changes}
    return RunSettings.from_run_config(run)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    reference = make_strategy()
    arrays = start_arrays()
    for r in range(1, 5):
        arrays = play_round(reference, arrays, r)

    first = make_strategy()
    hooks = DeploymentHooks.from_settings(settings_for(tmp_path, resume=False))
    start, crashed = hooks.start(first, start_arrays())
    assert start == 1
    for r in (1, 2):
        crashed = play_round(first, crashed, r)
        hooks.round_end(r, crashed, first)
    # the coordinator dies here; a new process resumes from the checkpoint
    second = make_strategy()
    hooks = DeploymentHooks.from_settings(settings_for(tmp_path, resume=True))
    start, resumed = hooks.start(second, start_arrays())
    assert start == 3
    assert [r.round for r in second.history] == [1, 2]
    assert np.allclose(second.momentum_vector[0], first.momentum_vector[0])
    for r in (3, 4):
        resumed = play_round(second, resumed, r)
        hooks.round_end(r, resumed, second)
    hooks.finish(second)
    for key in arrays.keys():
        assert np.allclose(resumed[key].numpy(), arrays[key].numpy(), atol=1e-6), key
    assert [r.round for r in second.history] == [1, 2, 3, 4]
    status = read_status(tmp_path / "status.json")
    assert status["state"] == "completed" and status["rounds_completed"] == 4 and status["first_round"] == 3


def test_without_momentum_state_the_resume_would_drift(tmp_path):
    """The momentum really matters: dropping it changes the result (guards the test above)."""
    reference = make_strategy()
    arrays = start_arrays()
    for r in range(1, 4):
        arrays = play_round(reference, arrays, r)
    cut = make_strategy()
    mid = start_arrays()
    for r in (1, 2):
        mid = play_round(cut, mid, r)
    fresh = make_strategy()  # no momentum restored
    fresh.history = list(cut.history)
    mid = play_round(fresh, mid, 3)
    assert not np.allclose(mid["w"].numpy(), arrays["w"].numpy(), atol=1e-6)


def test_checkpoint_files_and_pruning(tmp_path):
    strategy = make_strategy()
    checkpoints = RoundCheckpoints(tmp_path)
    arrays = start_arrays()
    settings = settings_for(tmp_path, resume=False)
    for r in (1, 2, 3):
        arrays = play_round(strategy, arrays, r)
        checkpoints.save(r, arrays, strategy, settings)
    names = sorted(p.name for p in tmp_path.glob("round-*.npz"))
    assert names == ["round-00002-global.npz", "round-00002-strategy.npz", "round-00003-global.npz", "round-00003-strategy.npz"]
    loaded = checkpoints.load()
    assert loaded.round == 3 and list(loaded.arrays) == ["w", "b"]
    assert np.array_equal(loaded.arrays["w"], arrays["w"].numpy())
    assert set(loaded.strategy_arrays) == {"momentum/w", "momentum/b"}
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    assert manifest["global"] == "round-00003-global.npz" and manifest["keys"] == ["w", "b"]


def test_a_torn_write_leaves_the_previous_checkpoint(tmp_path):
    strategy = make_strategy(momentum=0.0)
    checkpoints = RoundCheckpoints(tmp_path)
    settings = settings_for(tmp_path, resume=False)
    arrays = play_round(strategy, start_arrays(), 1)
    checkpoints.save(1, arrays, strategy, settings)
    (tmp_path / "round-00002-global.npz").write_bytes(b"half a file")  # crash before the manifest
    assert checkpoints.load().round == 1
    (tmp_path / "round-00001-global.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="array file missing or corrupt"):
        checkpoints.load()


def test_resume_refuses_other_settings_and_fresh_start_refuses_old_checkpoint(tmp_path):
    strategy = make_strategy()
    hooks = DeploymentHooks.from_settings(settings_for(tmp_path, resume=False))
    hooks.start(strategy, start_arrays())
    hooks.round_end(1, play_round(strategy, start_arrays(), 1), strategy)
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        DeploymentHooks.from_settings(settings_for(tmp_path, resume=False)).start(make_strategy(), start_arrays())
    with pytest.raises(CheckpointError, match=r"strategy: 'fsar' -> 'fedavg'"):
        DeploymentHooks.from_settings(settings_for(tmp_path, resume=True, strategy="fedavg")).start(make_strategy(), start_arrays())
    # every key that shapes the training is pinned, not only the strategy's identity
    for key, value in (("learning-rate", 0.01), ("dp-epsilon", 8.0), ("local-epochs", 3)):
        with pytest.raises(CheckpointError, match=rf"{key}: .* -> {value!r}\); a resumed run may change only"):
            DeploymentHooks.from_settings(settings_for(tmp_path, resume=True, **{key: value})).start(
                make_strategy(), start_arrays())
    # more rounds, and how the run is operated, may change
    more = settings_for(tmp_path, resume=True, **{"num-server-rounds": 6, "timeout-s": 60.0, "eval-every": 2})
    assert DeploymentHooks.from_settings(more).start(make_strategy(), start_arrays())[0] == 2
    bigger = ArrayRecord(OrderedDict(w=Array(np.zeros((4, 3), np.float32)), b=Array(np.ones(3, np.float32))))
    with pytest.raises(CheckpointError, match=r"parameter 'w' is \(2, 3\), the model expects \(4, 3\)"):
        DeploymentHooks.from_settings(settings_for(tmp_path, resume=True)).start(make_strategy(), bigger)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        RoundCheckpoints(tmp_path / "empty").load()


def test_simulation_runs_have_no_hooks():
    assert DeploymentHooks.from_settings(RunSettings.from_run_config({"strategy": "fsar"})) is None


def test_status_and_metrics_from_the_status_file(tmp_path, monkeypatch):
    strategy = make_strategy()
    hooks = DeploymentHooks.from_settings(settings_for(tmp_path, resume=False))
    arrays = hooks.start(strategy, start_arrays())[1]
    for r in (1, 2):
        arrays = play_round(strategy, arrays, r)
        hooks.round_end(r, arrays, strategy)
    monkeypatch.setenv("FEDSAR_COORDINATOR_STATE", str(tmp_path))
    record_privacy_spent("site-11", 0.75)
    view = {"up": 1.0, "enrolled": 3, "connected": 2, "sites": {"site-11": 1.0, "site-12": 1.0, "site-13": 0.0}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoordinatorCollector(tmp_path, tmp_path / "status.json", lambda: view))
    text = generate_latest(registry).decode()
    assert "fedsar_rounds_completed_total 2.0" in text
    assert "fedsar_round_duration_seconds_count 2.0" in text
    assert "fedsar_sites_participating 3.0" in text and "fedsar_sites_connected 2.0" in text
    assert 'fedsar_privacy_epsilon_spent{site="site-11"} 0.75' in text
    assert 'fedsar_round_site_accuracy{site="site-12"}' in text and 'fedsar_round_site_train_loss{site="site-13"}' in text
    assert 'fedsar_enrolled_site_online{site="site-13"} 0.0' in text
    assert 'fedsar_round_site_trained_accuracy{site="site-12"} 0.52' in text
    assert "fedsar_mean_trained_accuracy 0.52" in text  # mean of 0.51, 0.52, 0.53
    doc = read_status(tmp_path / "status.json")
    text = format_status(doc, {"alive": True, "pid": 1, "address": "localhost:9092", "run_id": 7},
                         [{"name": "site-11", "node_id": 1, "status": "online"}, {"name": "site-12", "node_id": 2, "status": "offline"}])
    assert "2/4 rounds" in text and "1 connected of 2 enrolled" in text and "site-13" in text
    assert "(after local training 52.0%)" in text
    assert "site-12                  0.5000     62.0%    52.0%" in text, text
    assert "run: running, 2/4 rounds" in text
    # a coordinator that was killed or stopped mid-run: its last word is not shown as current
    dead = format_status(doc, {"alive": False, "pid": 1, "address": "localhost:9092", "run_id": 7,
                               "run_status": "running"}, None)
    assert "coordinator: not running (pid 1), SuperLink localhost:9092, run 7\n" in dead and "[running]" not in dead
    assert "run: interrupted (the coordinator stopped; fedsar-server start --resume goes on), 2/4 rounds" in dead


def test_a_site_that_declines_keeps_its_epsilon_in_the_status():
    from server.status import privacy_from_history
    from strategies.screening import RoundRecord

    dp = {"privacy-dp": 1.0, "privacy-declined": 0.0}
    history = [
        RoundRecord(1, train={"a": {**dp, "privacy-epsilon": 7.9}, "b": {**dp, "privacy-epsilon": 3.0},
                              "c": {"privacy-dp": 0.0, "privacy-epsilon": 0.0}}),
        RoundRecord(2, train={"b": {**dp, "privacy-epsilon": 4.0}},
                    declined={"a": {**dp, "privacy-declined": 1.0, "privacy-epsilon": 7.95}}),
    ]
    assert privacy_from_history(history) == {"a": 7.95, "b": 4.0}  # c trains without DP


def test_the_daemon_reads_round_progress_only_from_the_run_it_started():
    from server.daemon import progress_line, status_of_run

    earlier = {"started_at": 100.0, "num_rounds": 3, "rounds_completed": 3,
               "last_round": {"round": 3, "sites_ok": 2, "sites_failed": 0, "mean_accuracy": 0.5, "wall_s": 1.0}}
    assert status_of_run(earlier, requested_at=200.0) == {}  # the previous run's file, same state folder
    assert status_of_run(None, requested_at=200.0) == {}
    current = {**earlier, "started_at": 201.0, "rounds_completed": 1,
               "last_round": {**earlier["last_round"], "round": 1}}
    assert status_of_run(current, requested_at=200.0) is current
    assert progress_line(current).startswith("round 1/3: 2 sites aggregated, 0 failed or dropped, mean accuracy 50.0%")
    one = {**current, "last_round": {**current["last_round"], "sites_ok": 1, "sites_failed": 1, "dropped": ["b: declined"]}}
    assert progress_line(one).startswith("round 1/3: 1 site aggregated, 1 failed or dropped,")
    assert progress_line(one).endswith("; dropped: b: declined")


def test_example_federation_config_and_errors(tmp_path):
    config = load_federation_config(EXAMPLES / "federation.toml")
    assert config.name == "tiny-demo" and [s.name for s in config.sites] == ["site-a", "site-b"]
    assert config.run["scenario"] == str(EXAMPLES / "tiny-scenario.toml")
    assert config.settings().min_sites == 2 and config.state_dir == EXAMPLES / "state" / "coordinator"
    text = (EXAMPLES / "federation.toml").read_text()
    for change, message in (
        (("[run]", "[run]\nout-dir = 'x'"), "sets out-dir, which fedsar-server sets itself"),
        (("port = 9092", "port = 99999"), "port = 99999 is not a port number"),
        (('name = "site-b"', 'name = "site-a"'), "site names repeat"),
        (("min-sites = 2", "min-sites = 'two'"), "min-sites"),
        (("min-sites = 2", "min-site = 2"), "'min-site' is not a fedsar run-config key; did you mean 'min-sites'"),
        (("wait_for_sites_s = 0", "wait_for_sites_s = -5"), "wait_for_sites_s = -5: seconds"),
        (("[[sites]]", "[[sitez]]"), "unknown section"),
    ):
        path = tmp_path / "federation.toml"
        path.write_text(text.replace(*change, 1))
        with pytest.raises(FederationConfigError, match=message):
            load_federation_config(path)


def test_reading_a_federation_config_needs_no_torch():
    """``fedsar-server status`` and ``stop`` load federation.toml, run settings and all:
    checking the run's device name must not import torch (about 2 s)."""
    code = ("import sys; from server.federation_config import load_federation_config; "
            f"load_federation_config({str(EXAMPLES / 'federation.toml')!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_initial_model_is_found_next_to_the_federation_config_or_refused_by_name(tmp_path):
    text = (EXAMPLES / "federation.toml").read_text().replace("[run]", "[run]\ninitial-model = 'warm/global.npz'", 1)
    path = tmp_path / "federation.toml"
    path.write_text(text)
    with pytest.raises(FederationConfigError, match=r"warm/global.npz: no such file"):
        load_federation_config(path)
    (tmp_path / "warm").mkdir()
    (tmp_path / "warm" / "global.npz").write_bytes(b"")
    assert load_federation_config(path).run["initial-model"] == str(tmp_path / "warm" / "global.npz")


def test_dashboard_queries_only_exported_metrics(tmp_path):
    """Every metric the Grafana dashboard plots is one the coordinator or a site exports."""
    import re

    from client.metrics import SiteCollector  # the site exporter

    strategy = make_strategy()
    hooks = DeploymentHooks.from_settings(settings_for(tmp_path, resume=False))
    arrays = hooks.start(strategy, start_arrays())[1]
    hooks.round_end(1, play_round(strategy, arrays, 1), strategy)
    (tmp_path / "privacy-spent.json").write_text('{"site-11": 1.0}')
    site_doc = {"site": "s", "last_round": 1, "messages": {"train": 1, "evaluate": 1}, "failures": 0,
                "bytes_received": 1, "bytes_sent": 1, "privacy_epsilon": {"s": 0.5},
                "train": {"train-loss": 1.0, "train-accuracy": 0.5, "train-seconds": 1.0},
                "evaluate": {"eval-loss": 1.0, "eval-accuracy": 0.5}}
    (tmp_path / "site-metrics.json").write_text(json.dumps(site_doc))
    registry = CollectorRegistry(auto_describe=False)
    view = {"up": 1.0, "enrolled": 3, "connected": 3, "sites": {"site-11": 1.0}}
    registry.register(CoordinatorCollector(tmp_path, tmp_path / "status.json", lambda: view))
    registry.register(SiteCollector("s", tmp_path / "site-metrics.json", lambda: {"up": 1.0, "restarts": 0.0}))
    exported = {line.split("{")[0].split(" ")[0] for line in generate_latest(registry).decode().splitlines()
                if line and not line.startswith("#")}
    dashboard = json.loads((EXAMPLES.parent / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
               for name in re.findall(r"fedsar_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, sorted(queried - exported)


def test_app_bundle_carries_the_run_config_and_no_code(tmp_path):
    import tomllib

    from flwr.cli.build import build_fab_from_disk

    from server.daemon import superlink_command, write_app

    config = load_federation_config(EXAMPLES / "federation.toml")
    config.state_dir = tmp_path / "state"
    app = write_app(config, resume=True)
    project = tomllib.loads((app / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    run = project["tool"]["flwr"]["app"]["config"]
    assert run["resume"] is True and run["federation"] == "tiny-demo" and run["num-server-rounds"] == 3
    assert run["checkpoint-dir"] == str(tmp_path / "state" / "checkpoints")
    assert RunSettings.from_run_config(run).extra["status-file"] == str(tmp_path / "state" / "status.json")
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))).namelist()
    assert not [n for n in names if n.endswith(".py")]
    cmd = superlink_command(config)
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation"} <= set(cmd)
    assert "--insecure" not in cmd and cmd[cmd.index("--ssl-certfile") + 1] == str(config.certificate)


def detached_sleeper(marker: str, state: Path) -> subprocess.Popen:
    """A process in a session of its own whose environment marks it with ``state``, as a
    daemon's leftover task process is."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            env={**os.environ, marker: str(state)}, start_new_session=True)


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finding leftovers reads /proc (Linux)")
def test_a_new_coordinator_stops_what_a_killed_one_left_behind(tmp_path):
    """A killed coordinator's SuperExec lives in a session of its own and would claim the
    next run's ServerApp task; the next coordinator on the same state folder stops it first."""
    import io

    from server.daemon import Coordinator
    from server.metrics import STATE_ENV
    from skeletons.processes import processes_marked

    config = load_federation_config(EXAMPLES / "federation.toml")
    config.state_dir = tmp_path / "state"
    orphan, other = detached_sleeper(STATE_ENV, config.state_dir), detached_sleeper(STATE_ENV, tmp_path / "another")
    try:
        deadline = time.monotonic() + 20
        while orphan.pid not in processes_marked(STATE_ENV, str(config.state_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_marked(STATE_ENV, str(config.state_dir)) == [orphan.pid]
        out = io.StringIO()
        Coordinator(config, out=out).stop_leftovers()
        assert orphan.wait(15) is not None
        assert other.poll() is None  # another coordinator's process is left alone
        assert f"stopped 1 processes left over from the previous coordinator process (pids {orphan.pid})" in out.getvalue()
        assert processes_marked(STATE_ENV, str(config.state_dir)) == []
    finally:
        for proc in (orphan, other):
            proc.kill()
            proc.wait(5)


def test_new_run_sets_the_previous_run_aside_whole(tmp_path):
    """``--new-run`` moves the last run's checkpoints, results and status out of the way:
    the new run starts at round 1 and the old files stay readable, byte for byte."""
    import io

    from server.daemon import Coordinator, CoordinatorError

    config = load_federation_config(EXAMPLES / "federation.toml")
    config.state_dir = tmp_path / "state"
    strategy = make_strategy()
    hooks = DeploymentHooks.from_settings(settings_for(config.state_dir, resume=False))
    _, arrays = hooks.start(strategy, start_arrays())
    for server_round in (1, 2):
        arrays = play_round(strategy, arrays, server_round)
        hooks.round_end(server_round, arrays, strategy)
    config.out_dir.mkdir(parents=True)
    (config.out_dir / "results.json").write_text('{"complete": true}')
    kept_log = config.state_dir / "logs" / "serverapp.log"
    kept_log.parent.mkdir()
    kept_log.write_text("stays where it is")
    before = {p.relative_to(config.state_dir): p.read_bytes() for p in config.state_dir.rglob("*") if p.is_file()}

    out = io.StringIO()
    moved = Coordinator(config, out=out, new_run=True).set_aside_previous_run()
    assert moved is not None and moved.parent == config.state_dir / "previous"
    assert not config.checkpoint_dir.exists() and not config.out_dir.exists() and not config.status_file.exists()
    assert not RoundCheckpoints(config.checkpoint_dir).exists()
    assert RoundCheckpoints(moved / "checkpoints").latest_round() == 2
    assert read_status(moved / "status.json")["rounds_completed"] == 2
    # the new run's hooks now start at round 1 where they refused before
    assert DeploymentHooks.from_settings(settings_for(config.state_dir, resume=False)).start(make_strategy(), start_arrays())[0] == 1
    for rel, data in before.items():
        where = config.state_dir / rel if rel.parts[0] == "logs" else moved / rel
        assert where.read_bytes() == data, rel
    assert f"set the previous run aside (checkpoints, run, status.json) in {moved}" in out.getvalue()

    # a second set-aside of the same second does not overwrite the first; an empty one moves nothing
    config.status_file.write_text("{}")
    again = Coordinator(config, out=out, new_run=True).set_aside_previous_run()
    assert again is not None and again != moved and (moved / "status.json").read_bytes() == before[Path("status.json")]
    assert Coordinator(config, out=out, new_run=True).set_aside_previous_run() is None
    with pytest.raises(CoordinatorError, match="choose one"):
        Coordinator(config, resume=True, new_run=True)


def test_start_takes_resume_or_new_run_not_both(capsys):
    import argparse

    from server import start_cmd

    parser = argparse.ArgumentParser(prog="fedsar-server start")
    start_cmd.add_arguments(parser)
    assert parser.parse_args(["--config", "f.toml", "--new-run"]).new_run is True
    assert parser.parse_args(["--config", "f.toml"]).new_run is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", "f.toml", "--new-run", "--resume"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_resume_with_a_changed_run_is_refused_before_the_superlink_starts(tmp_path):
    import io

    from server.daemon import Coordinator, CoordinatorError

    config = load_federation_config(EXAMPLES / "federation.toml")
    config.state_dir = tmp_path / "state"
    strategy = make_strategy()
    RoundCheckpoints(config.checkpoint_dir).save(1, play_round(strategy, start_arrays(), 1), strategy, config.settings())
    config.run["learning-rate"] = 0.01
    with pytest.raises(CoordinatorError, match=r"learning-rate: 0.05 -> 0.01\); a resumed run may change only"):
        Coordinator(config, resume=True, out=io.StringIO()).preflight()
    config.run["learning-rate"] = 0.05
    config.run["num-server-rounds"] = 9
    try:  # more rounds may change; the example's keys, when not made, are all that can be missing
        Coordinator(config, resume=True, out=io.StringIO()).preflight()
    except CoordinatorError as err:
        assert "other settings" not in str(err)
