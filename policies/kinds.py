"""The policy kinds and their configs' defaults, written once: in each kind's dataclass.

``rtvla train policy=<kind>`` composes ``policy_defaults()[kind]`` (registered with hydra's
config store by the command line), so a yaml never restates a default. Fields the trainer
fills from the dataset (camera keys and sizes, state and action sizes, vocabularies) are
left out: they are not settings.
"""

from __future__ import annotations

import dataclasses

from policies.hierarchy import HighLevelConfig
from policies.state_flow import StateFlowConfig
from policies.vla import VLAConfig

KINDS = {  # name -> (config dataclass, fields taken from the dataset)
    "vla": (VLAConfig, ("image_keys", "state_dim", "action_dim", "env_state_dim")),
    "state_flow": (StateFlowConfig, ("state_dim", "env_state_dim", "action_dim", "relative_mask")),
    "high_level": (
        HighLevelConfig,
        (
            "image_keys",
            "image_size",
            "state_dim",
            "step_classes",
            "corrective_classes",
            "word_count",
            "env_state_dim",
        ),
    ),
}


def policy_defaults() -> dict[str, dict]:
    """kind -> its ``policy/`` config group entry: ``name`` and every setting's default."""
    entries = {}
    for name, (config, from_dataset) in KINDS.items():
        defaults = {
            f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(config)
            if f.name not in from_dataset
        }
        entries[name] = {"name": name, **defaults}
    return entries
