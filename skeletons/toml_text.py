"""TOML values written by hand, for the few files fedsar writes in TOML (Python's
``tomllib`` reads TOML but does not write it)."""

from __future__ import annotations

import json
from typing import Any


def toml_value(value: Any) -> str:
    """A TOML scalar or inline table: booleans and numbers as they are, a dict as an
    inline table, anything else as a quoted string (JSON strings are valid TOML basic
    strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))
