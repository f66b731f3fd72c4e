"""``fedsar-sim``: the researcher's entry point."""

from __future__ import annotations

from typing import Sequence

from skeletons.clikit import dispatch

COMMANDS = {
    "datasets": ("simulations.datasets_cmd", "summarize the skeleton data sets found under --data-root"),
    "centralized": ("simulations.centralized", "train one model on one data set (reference / upper bound)"),
    "run": ("simulations.run", "run one federated scenario with one strategy on Flower's simulation engine"),
    "compare": ("simulations.compare", "run several strategies on a scenario; write a table and plots"),
    "private-recipe": ("simulations.private_recipe",
                       "print the private recipe's run-config keys for a coordinator (builds the warm start once)"),
    "knn": ("simulations.knn", "k-NN top-1 of a checkpoint's shared backbone on an unseen data set"),
    "standins": ("simulations.standins_cmd", "write small generated stand-ins of the fsar-paper data sets"),
    "cost": ("simulations.cost", "estimate time and memory per round of fsar-paper on the full data sets"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("fedsar-sim", "Simulate federations of skeleton-recording sites.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
