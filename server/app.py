"""The coordinator's Flower ``ServerApp`` (``flwr run .`` and deployments use this one)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from server.settings import RunSettings, with_scenario_defaults
from skeletons.clikit import configure_logging

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config. In a deployed ServerApp process
    nothing else configures logging, and Python's fallback shows warnings only: the
    round-by-round INFO lines (warm start, label groups, rounds) would be lost from the
    log the coordinator keeps. The scenario's ``[defaults]`` fill the keys the run config
    leaves out, as under ``fedsar-sim``."""
    configure_logging()
    run_federation(grid, RunSettings.from_run_config(with_scenario_defaults(dict(context.run_config))))


def make_server_app(settings: RunSettings, progress=None, sink: dict | None = None) -> ServerApp:
    """A ServerApp bound to explicit settings (the simulator passes them in directly)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        results = run_federation(grid, settings, progress=progress)
        if sink is not None:
            sink.update(results)

    return bound
