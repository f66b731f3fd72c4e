"""fedsar models: the skeleton GCN with FSAR's Adaptive Topology Structure, and parameter roles."""

from models.config import ModelConfig
from models.io import load_model, save_model
from models.network import FSARNet, build_model
from models.roles import (
    KINDS,
    PERSONAL_KINDS,
    POLICIES,
    is_personal,
    merge_state,
    parameter_kind,
    personal_kinds,
    split_state,
)

__all__ = [
    "FSARNet", "ModelConfig", "build_model", "load_model", "save_model",
    "KINDS", "PERSONAL_KINDS", "POLICIES", "is_personal", "merge_state",
    "parameter_kind", "personal_kinds", "split_state",
]
