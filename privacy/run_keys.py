"""The privacy options' run-config keys, in a module light enough for every config reader.

:mod:`server.settings` checks a run config's keys against these (and its own fields)
without importing torch or Flower; :mod:`privacy.dp`, :mod:`privacy.central` and
:mod:`privacy.secagg` read their settings under the same names.
"""

from __future__ import annotations

# DP-SGD on the sites: run-config key -> DPSettings field
DP_RUN_KEYS = {
    "dp-epsilon": "epsilon",
    "dp-delta": "delta",
    "dp-max-grad-norm": "max_grad_norm",
    "dp-noise-multiplier": "noise_multiplier",
    "dp-max-noise-multiplier": "max_noise_multiplier",
    "dp-accountant": "accountant",
    "dp-grad-sample-mode": "grad_sample_mode",
    "dp-max-physical-batch": "max_physical_batch",
    "dp-secure-mode": "secure_mode",
}
CENTRAL_KEYS = ("central-dp-noise", "central-dp-clip", "central-dp-clipping", "central-dp-delta")
SECAGG_KEYS = ("secagg", "secagg-num-shares", "secagg-threshold", "secagg-clipping-range", "secagg-max-weight",
               "secagg-quantization-range", "secagg-timeout")
