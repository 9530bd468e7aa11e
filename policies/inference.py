"""A trained VLA seen as a flow model over raw observations (what servers and evaluation use).

``VLAPolicy.velocity_fn`` takes observation requests (anything with an ``observation`` dict of
raw arrays, uint8 (H, W, 3) images and float32 state, and an ``instruction`` string), builds the
VLA's batch, encodes the prefix once and returns the expert's velocity in normalized action
space. Samplers (plain, RTC-guided, prefix-conditioned) live with the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from policies.flow import VelocityFn
from policies.normalize import Normalizer
from policies.vla import VLA


@dataclass(frozen=True)
class PolicyInfo:
    """What a client needs to know about a served policy (sent in the metadata reply)."""

    model_id: str
    chunk_length: int  # H, actions per chunk
    action_dim: int  # A
    fps: float  # control rate the policy was trained at
    features: dict[str, dict] = field(default_factory=dict)  # key -> {"dtype", "shape"}


class HasObservation(Protocol):
    observation: dict[str, np.ndarray]
    instruction: str


class VLAPolicy:
    """A VLA with its normalization, as a ``runtime.policy.FlowModel``."""

    def __init__(self, model: VLA, normalizer: Normalizer, info: PolicyInfo) -> None:
        self.model = model.eval()
        self.normalizer = normalizer
        self._info = info
        self.device = next(model.parameters()).device

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def batch(self, requests: Sequence[HasObservation]) -> dict[str, Tensor]:
        """Raw observations -> the VLA's batch (images float CHW in [0, 1], state normalized)."""
        cfg = self.model.config
        batch: dict[str, Tensor] = {}
        for key in cfg.image_keys:
            images = np.stack([_feature(r, key) for r in requests])  # (B, h, w, 3) uint8
            batch[key] = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 255
        state = torch.from_numpy(np.stack([_feature(r, "observation.state") for r in requests]))
        batch["observation.state"] = self.normalizer.normalize("observation.state", state.float())
        tokens, mask = self.model.tokenize_instructions([r.instruction for r in requests])
        batch["lang_tokens"], batch["lang_mask"] = tokens, mask
        return {k: v.to(self.device) for k, v in batch.items()}

    def velocity_fn(self, requests: Sequence[HasObservation]) -> VelocityFn:
        return self.model.velocity_fn(self.batch(requests))

    def normalize_actions(self, actions: np.ndarray) -> Tensor:
        tensor = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
        return self.normalizer.normalize("action", tensor)

    def unnormalize_actions(self, actions: Tensor) -> np.ndarray:
        raw = self.normalizer.unnormalize("action", actions.float())
        return raw.detach().cpu().numpy().astype(np.float32)


def _feature(request: HasObservation, key: str) -> np.ndarray:
    try:
        return request.observation[key]
    except KeyError:
        raise ValueError(
            f"the observation has no {key!r} (it has {sorted(request.observation)}); "
            "the policy was trained with it: send it, or serve a policy trained on these features"
        ) from None
