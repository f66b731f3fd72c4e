"""``fedsar-privacy``: keys and certificates, anonymization, leakage audits, budgets."""

from __future__ import annotations

from typing import Sequence

from skeletons.clikit import dispatch

COMMANDS = {
    "keys": ("privacy.keys_cmd", "make TLS certificates and site keys for a federation"),
    "anonymize": ("privacy.anonymize_cmd", "write an anonymized copy of a data set as .npz"),
    "audit": ("privacy.audit_cmd", "measure identity, attribute and linkage leakage, raw versus protected"),
    "budget": ("privacy.budget_cmd", "show or check a site's differential-privacy budget"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("fedsar-privacy", "Protect and audit what skeleton data reveals about people.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
