"""What the console scripts print: fedsar's lines once, in fedsar's format; Flower's once."""

from __future__ import annotations

import io
import logging
import tomllib
from pathlib import Path

from skeletons.clikit import configure_logging


def test_configure_logging_takes_over_the_root_logger_and_leaves_flower_to_its_own_handler():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    loggers = ("privacy.ledger", "some.library")
    levels = {name: logging.getLogger(name).level for name in loggers}
    try:
        # what importing Opacus does: a plain console handler with its own format
        logging.basicConfig(format="%(asctime)s:%(levelname)s:%(message)s", force=True)
        capture = logging.NullHandler()  # a handler of another kind (a file, a test's capture) stays
        root.addHandler(capture)
        for name in loggers:
            logging.getLogger(name).setLevel(logging.NOTSET)
        configure_logging()
        configure_logging()  # twice: still one console handler
        consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
        assert len(consoles) == 1 and capture in root.handlers
        sink = io.StringIO()
        consoles[0].setStream(sink)
        logging.getLogger("privacy.ledger").info("epsilon 1.0")
        logging.getLogger("flwr").warning("a Flower line")  # Flower prints it through its own handler
        logging.getLogger("some.library").info("below WARNING")
        logging.getLogger("some.library").warning("a library warning")
        lines = sink.getvalue().splitlines()
        assert len(lines) == 2, lines
        assert lines[0].endswith(" INFO privacy.ledger: epsilon 1.0")
        assert lines[1].endswith(" WARNING some.library: a library warning")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_pyproject_holds_no_federations_table_for_flower_to_rewrite():
    """Flower 1.41 moves a ``[tool.flwr.federations]`` table into ~/.flwr/config.toml the
    first time ``flwr run .`` sees it, and rewrites pyproject.toml to comment it out."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    flwr = project["tool"]["flwr"]
    assert "federations" not in flwr
    assert flwr["app"]["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}


def test_simulated_sites_drop_only_flowers_actor_shutdown_notice():
    from client.app import _WithoutActorShutdownNotice

    def record(msg: str, *args) -> logging.LogRecord:
        return logging.LogRecord("flwr", logging.WARNING, __file__, 1, msg, args, None)

    quiet = _WithoutActorShutdownNotice()
    assert not quiet.filter(record("Manually terminating %s", "ClientAppActor"))
    assert quiet.filter(record("Manually terminating %s", "SomethingElse"))
    assert quiet.filter(record("Actor %s crashed", "ClientAppActor"))
