"""A site's own configuration, its readiness checks, its personal parameters on disk
and its metrics file."""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

from client.cli import main as client_main
from client.metrics import METRICS_ENV, SiteCollector, read_metrics, record_exchange, record_privacy_spent
from client.personal_store import PersonalStore, load_personal, save_personal
from client.site_config import SiteConfigError, check_site_ready, load_site_config
from privacy.keys import generate_keys

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"

SITE = """
[site]
name = "clinic-1"
state_dir = "state"

[coordinator]
address = "coord.example.org:9092"
ca_certificate = "keys/ca.crt"

[keys]
private_key = "keys/sites/clinic-1.key"

[data]
dataset = "synthetic"
options = { num_classes = 3, num_subjects = 2, samples_per_class_subject = 1, num_frames = 8 }

[privacy]
epsilon = 4.0
delta = 1e-6
ledger = "ledger.json"
"""


@pytest.fixture()
def site_dir(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "keys", ["clinic-1"], ["localhost"])
    (tmp_path / "site.toml").write_text(SITE)
    return tmp_path


def write(site_dir: Path, text: str) -> Path:
    path = site_dir / "site.toml"
    path.write_text(text)
    return path


def test_reads_paths_relative_to_the_file(site_dir):
    site = load_site_config(site_dir / "site.toml")
    assert site.name == "clinic-1" and site.spec.name == "clinic-1" and site.spec.dataset == "synthetic"
    assert site.private_key == site_dir / "keys" / "sites" / "clinic-1.key"
    assert site.state_dir == site_dir / "state"
    assert site.ledger_path == site_dir / "state" / "ledger.json"
    assert site.privacy.epsilon == 4.0 and site.privacy.delta == 1e-6
    assert site.layout == "kinect-v1" and site.executor == "warm" and site.data_root is None
    assert site.privacy.max_noise_multiplier is None


def test_the_sites_noise_bound_reaches_its_dp_settings(site_dir):
    from privacy.dp import DPSettings, site_toml_keys

    site = load_site_config(write(site_dir, SITE.replace("epsilon = 4.0", "epsilon = 4.0\nmax_noise_multiplier = 12")))
    settings = DPSettings.resolve(({"dp-max-noise-multiplier": "50"}, "run config"),
                                  (site_toml_keys(site), "site config"))
    assert settings.max_noise_multiplier == 12.0 and settings.epsilon == 4.0  # the site's own wins


def test_a_data_path_becomes_root_and_folder(site_dir):
    text = SITE.replace('dataset = "synthetic"', 'dataset = "nw-ucla"\npath = "/data/NW-UCLA"')
    site = load_site_config(write(site_dir, text))
    assert site.data_root == "/data" and site.spec.folder == "NW-UCLA" and site.data_path == Path("/data/NW-UCLA")


@pytest.mark.parametrize(
    "change, message",
    [
        (("[keys]", "[keyz]"), "unknown section"),
        (('address = "coord.example.org:9092"', 'address = "coord.example.org"'), "address = 'coord.example.org' must be host:port"),
        (('epsilon = 4.0', 'epsilon = "four"'), "epsilon = 'four' must be a float"),
        (('epsilon = 4.0', 'epsilon = -1.0'), "epsilon = -1.0 must be positive"),
        (('epsilon = 4.0', 'epsilon = 4.0\nmax_noise_multiplier = 0'), "max_noise_multiplier = 0.0 must be positive"),
        (('epsilon = 4.0', 'epsilon = nan'), r"\[privacy\] epsilon = nan must be positive"),
        (('epsilon = 4.0', 'noise_multiplier = -1.0'), r"\[privacy\] noise_multiplier = -1.0 must be positive"),
        (('epsilon = 4.0', 'epsilon = 4.0\nmax_grad_norm = 0'), r"\[privacy\] max_grad_norm = 0.0 must be positive"),
        (('dataset = "synthetic"', 'dataset = "msr-action3d"'), "reads files: give path"),
        (('name = "clinic-1"', 'name = "clinic 1"'), "site name"),
        (('[data]', '[data]\nlayout = "kinect-v9"'), "layout 'kinect-v9'"),
        (('[privacy]', '[node]\nexecutor = "threads"\n[privacy]'), "executor = 'threads'"),
        (('ca_certificate = "keys/ca.crt"', 'ca_certificate = "keys/ca.crt"\nport = 3'), r"\[coordinator\] has unknown field"),
        (('private_key = "keys/sites/clinic-1.key"', ''), r"\[keys\] is missing 'private_key'"),
    ],
)
def test_errors_name_the_file_and_field(site_dir, change, message):
    path = write(site_dir, SITE.replace(*change))
    with pytest.raises(SiteConfigError, match=message) as err:
        load_site_config(path)
    assert str(path) in str(err.value)


def test_check_reports_the_site_and_its_privacy_settings(site_dir, capsys):
    path = write(site_dir, SITE.replace("epsilon = 4.0", "epsilon = 4.0\nmax_noise_multiplier = 12"))
    assert client_main(["check", "--site", str(path)]) == 0
    out = capsys.readouterr().out
    assert "site clinic-1: ready" in out and "6 sequences, 3 classes, 2 subjects" in out
    assert "privacy      epsilon 4.0, delta 1e-06" in out
    assert "declines rounds that need noise multiplier above 12" in out


def test_example_site_configs_load():
    for name in ("site-a", "site-b"):
        site = load_site_config(EXAMPLES / f"{name}.toml")
        assert site.name == name and site.address == "localhost:9092"


def test_ready_site_passes_and_loads_its_data(site_dir):
    check_site_ready(load_site_config(site_dir / "site.toml"))
    assert (site_dir / "state").is_dir()


def test_missing_key_data_and_loose_permissions_are_all_reported(site_dir):
    text = SITE.replace('dataset = "synthetic"', 'dataset = "nw-ucla"\npath = "no-such-data"')
    site = load_site_config(write(site_dir, text))
    os.chmod(site.private_key, 0o644)
    shutil.copy(site.private_key, site_dir / "copy.key")
    site.ca_certificate.unlink()
    with pytest.raises(SiteConfigError) as err:
        check_site_ready(site)
    text = str(err.value)
    assert "readable by others" in text and str(site.private_key) in text
    assert f"CA certificate {site.ca_certificate} does not exist" in text
    assert f"data folder {site_dir / 'no-such-data'} does not exist" in text


def test_start_refuses_without_key(site_dir, capsys):
    (site_dir / "keys" / "sites" / "clinic-1.key").unlink()
    assert client_main(["start", "--site", str(site_dir / "site.toml")]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "clinic-1.key does not exist" in err


def test_unloadable_data_is_refused(site_dir):
    text = SITE.replace("num_subjects = 2", "num_subjects = 0")
    with pytest.raises(SiteConfigError, match="cannot be loaded"):
        check_site_ready(load_site_config(write(site_dir, text)))


# -- personal parameters -------------------------------------------------------------
def arrays(value: float) -> dict[str, np.ndarray]:
    return {"head.weight": np.full((2, 3), value, np.float32), "topology.U": np.full(4, value, np.float32)}


def test_store_resumes_from_the_round_before(tmp_path):
    store = PersonalStore(tmp_path)
    for r in (1, 2, 3):
        store.save(arrays(r), "fed", r, "m")
    # a coordinator resumed at round 3 (it had checkpointed round 2): the round-2 save
    assert store.load("fed", 3, "m")["head.weight"][0, 0] == 2
    # a site that missed rounds and rejoins at round 5: its newest save
    assert store.load("fed", 5, "m")["head.weight"][0, 0] == 3
    # a new run of the federation, or another federation with the same model: carry over
    assert store.load("fed", 1, "m")["head.weight"][0, 0] == 3
    assert store.load("other", 1, "m")["head.weight"][0, 0] == 3
    assert store.load("fed", 5, "different-model") is None


def test_store_keeps_a_few_saves_and_replaces_a_retrained_round(tmp_path):
    store = PersonalStore(tmp_path, keep=3)
    for r in (1, 2, 3, 4):
        store.save(arrays(r), "fed", r, "m")
    store.save(arrays(40), "fed", 4, "m")  # round 4 trained again after a resume
    entries = store.entries()
    assert [e["round"] for e in entries] == [4, 3, 2]
    assert len(list(tmp_path.glob("personal-*.npz"))) == 3
    assert store.load("fed", 5, "m")["topology.U"][0] == 40
    assert oct(os.stat(tmp_path / entries[0]["file"]).st_mode & 0o777) == "0o600"


def test_store_survives_a_torn_index(tmp_path):
    store = PersonalStore(tmp_path)
    store.save(arrays(1), "fed", 1, "m")
    (tmp_path / "index.json").write_text("{not json")
    assert store.load("fed", 2, "m") is None


def context_for(site_path: Path | None) -> Context:
    node_config = {"site-config": str(site_path)} if site_path else {"partition-id": 0}
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def test_hooks_save_and_load_through_the_site_config(site_dir):
    ctx = context_for(site_dir / "site.toml")
    config = ConfigRecord({"federation": "fed", "server-round": 2, "model-config": "{}", "layout": "kinect-v1", "policy": "fsar"})
    assert load_personal(ctx, config) is None  # nothing saved yet
    for r, value in ((1, 6.0), (2, 7.0)):
        config["server-round"] = r
        save_personal(ctx, config, ArrayRecord(OrderedDict((k, Array(v)) for k, v in arrays(value).items())))
    # training round 2 again (coordinator resumed after round 1): the round-1 parameters
    assert load_personal(ctx, config)["head.weight"].numpy()[0, 0] == 6.0
    # evaluating round 2, or training round 3: the round-2 parameters
    assert load_personal(ctx, config, evaluating=True)["head.weight"].numpy()[0, 0] == 7.0
    config["server-round"] = 3
    assert np.array_equal(load_personal(ctx, config)["topology.U"].numpy(), arrays(7)["topology.U"])
    personal = ArrayRecord(OrderedDict((k, Array(v)) for k, v in arrays(9).items()))
    simulated = context_for(None)
    save_personal(simulated, config, personal)  # simulation: nothing written, nothing read
    assert load_personal(simulated, config) is None


def test_a_round_under_dp_sgd_never_starts_from_parameters_trained_without_it(site_dir):
    """Parameters fitted without DP on the same sequences would carry their information
    into the DP run's updates, outside the ledger: such a round starts afresh."""
    plain_site = site_dir / "site.toml"
    plain_site.write_text(plain_site.read_text().replace("epsilon = 4.0\n", ""))
    ctx = context_for(plain_site)
    config = ConfigRecord({"federation": "fed", "server-round": 1, "model-config": "{}", "layout": "kinect-v1",
                           "policy": "fsar"})
    save_personal(ctx, config, ArrayRecord(OrderedDict((k, Array(v)) for k, v in arrays(5.0).items())))
    private = ConfigRecord({**config, "federation": "fed-2", "dp-epsilon": 8.0})  # a new run, with DP-SGD
    assert load_personal(context_for(plain_site), private) is None
    assert load_personal(context_for(plain_site), config)["head.weight"].numpy()[0, 0] == 5.0  # without DP: carried over
    save_personal(ctx, private, ArrayRecord(OrderedDict((k, Array(v)) for k, v in arrays(6.0).items())))
    later = ConfigRecord({**private, "federation": "fed-3"})
    assert load_personal(context_for(plain_site), later)["head.weight"].numpy()[0, 0] == 6.0  # trained under DP
    store = PersonalStore(load_site_config(plain_site).personal_dir)
    assert [e["dp"] for e in store.entries()] == [True, False]


# -- metrics ---------------------------------------------------------------------------
def message(content: RecordDict, kind: str, run_id: int = 1) -> Message:
    meta = Metadata(run_id=run_id, message_id="m", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                    group_id="1", created_at=0.0, ttl=60.0, message_type=kind)
    return Message(content=content, metadata=meta)


def test_record_exchange_accumulates_in_the_metrics_file(site_dir):
    ctx = context_for(site_dir / "site.toml")
    sent = ArrayRecord(OrderedDict(w=Array(np.zeros(10, np.float32))))
    incoming = message(RecordDict({"arrays": sent, "config": ConfigRecord({"server-round": 3})}), "train")
    reply_content = RecordDict({"arrays": sent, "metrics": MetricRecord({"num-examples": 4, "train-loss": 0.7})})
    reply = Message(reply_content, reply_to=incoming)
    record_exchange(ctx, "train", incoming, reply)
    record_exchange(ctx, "train", incoming, reply)
    doc = read_metrics(load_site_config(site_dir / "site.toml").metrics_file)
    assert doc["bytes_received"] == doc["bytes_sent"] == 2 * len(sent["w"].data)
    assert doc["messages"]["train"] == 2 and doc["train"]["train-loss"] == pytest.approx(0.7) and doc["last_round"] == 3
    # the next run starts again at round 1: the last round is that run's, not the highest ever seen
    next_run = message(RecordDict({"arrays": sent, "config": ConfigRecord({"server-round": 1})}), "train", run_id=2)
    record_exchange(ctx, "train", next_run, Message(reply_content, reply_to=next_run))
    assert read_metrics(load_site_config(site_dir / "site.toml").metrics_file)["last_round"] == 1


def test_privacy_spent_reaches_the_daemon_collector(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    monkeypatch.setenv(METRICS_ENV, str(path))
    record_privacy_spent("clinic-1", 1.25)
    assert json.loads(path.read_text())["privacy_epsilon"]["clinic-1"] == 1.25
    families = {f.name: f for f in SiteCollector("clinic-1", path, lambda: {"up": 1.0, "restarts": 2.0}).collect()}
    assert families["fedsar_site_privacy_epsilon_spent"].samples[0].value == 1.25
    assert families["fedsar_site_up"].samples[0].value == 1.0
    assert families["fedsar_site_supernode_restarts"].samples[0].value == 2.0


def test_site_daemon_spots_refusals_and_builds_a_tls_authenticated_supernode(site_dir):
    from client.daemon import SiteDaemon, refusal_in

    assert "not enrolled" in refusal_in("Failed to activate SuperNode.\n[code: 2004] ...")
    assert "not signed" in refusal_in("ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED]")
    # as a SuperNode logs a certificate that does not name the host the site dialled
    mismatch = ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, certificate is "
                "not valid for 'vm'. (_ssl.c:1006)")
    assert refusal_in(mismatch) == "the coordinator's TLS certificate is not valid for the host in [coordinator] address"
    assert refusal_in("Connection attempt failed, retrying in 3.40 seconds") is None
    site = load_site_config(site_dir / "site.toml")
    cmd = SiteDaemon(site).supernode_command()
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == str(site.ca_certificate)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(site.private_key)
    assert cmd[cmd.index("--node-config") + 1] == f'site-config="{site.source}"'
    assert cmd[cmd.index("--isolation") + 1] == "process"  # the warm runner executes the tasks


def test_a_new_site_daemon_stops_what_a_killed_one_left_behind_and_only_one_runs_per_state_folder(site_dir):
    """A killed site daemon's task processes live in sessions of their own; the next
    daemon on the same state folder stops them first, and a second live daemon is refused."""
    import io
    import time

    from client.daemon import STATE_ENV, SiteDaemon, SiteDaemonError
    from skeletons.processes import processes_marked
    from test_checkpoint import detached_sleeper

    site = load_site_config(site_dir / "site.toml")
    orphan, other = detached_sleeper(STATE_ENV, site.state_dir), detached_sleeper(STATE_ENV, site_dir / "another-site")
    try:
        deadline = time.monotonic() + 20
        while orphan.pid not in processes_marked(STATE_ENV, str(site.state_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        out = io.StringIO()
        daemon = SiteDaemon(site, out=out)
        daemon._take_lock()
        daemon.stop_leftovers()
        assert orphan.wait(15) is not None
        assert other.poll() is None  # another site's process is left alone
        assert f"stopped 1 processes left over from the previous site daemon (pids {orphan.pid})" in out.getvalue()
        assert daemon.env()[STATE_ENV] == str(site.state_dir)  # what the SuperNode and its tasks inherit
        with pytest.raises(SiteDaemonError, match="another fedsar-client already runs with state folder"):
            SiteDaemon(site, out=io.StringIO())._take_lock()
    finally:
        for proc in (orphan, other):
            proc.kill()
            proc.wait(5)
