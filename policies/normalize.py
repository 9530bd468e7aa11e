"""Mean/std normalization of state and actions, from a dataset's own ``meta/stats.json``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from policies.features import ACTION, STATE

NORMALIZED_KEYS = (STATE, ACTION)
MIN_STD = 1e-2  # floor on a dimension's std, so a (nearly) constant joint does not blow up


class Normalizer:
    """z = (x - mean) / max(std, MIN_STD) per dimension, for ``NORMALIZED_KEYS``."""

    def __init__(self, mean: Mapping[str, np.ndarray], std: Mapping[str, np.ndarray]) -> None:
        self.mean = {k: np.asarray(v, dtype=np.float32) for k, v in mean.items()}
        self.std = {k: np.maximum(np.asarray(v, dtype=np.float32), MIN_STD) for k, v in std.items()}

    @classmethod
    def from_stats(
        cls, stats: Mapping[str, Mapping], keys: tuple[str, ...] = NORMALIZED_KEYS
    ) -> Normalizer:
        """From lerobot's dataset stats (``LeRobotDataset.meta.stats``), for ``keys``."""
        missing = [k for k in keys if k not in stats]
        if missing:
            raise ValueError(
                f"dataset stats have no entry for {missing}: the dataset's meta/stats.json is "
                "incomplete (or was recorded without them); re-record it or recompute its "
                "stats with lerobot"
            )
        return cls(
            {k: np.asarray(stats[k]["mean"]) for k in keys},
            {k: np.asarray(stats[k]["std"]) for k in keys},
        )

    def normalize(self, key: str, x: Tensor) -> Tensor:
        mean, std = self._params(key, x)
        return (x - mean) / std

    def unnormalize(self, key: str, z: Tensor) -> Tensor:
        mean, std = self._params(key, z)
        return z * std + mean

    def _params(self, key: str, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.as_tensor(self.mean[key], dtype=like.dtype, device=like.device)
        std = torch.as_tensor(self.std[key], dtype=like.dtype, device=like.device)
        return mean, std

    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors for safetensors: ``<key>.mean`` and ``<key>.std``."""
        out = {}
        for key in self.mean:
            out[f"{key}.mean"] = torch.from_numpy(self.mean[key].copy())
            out[f"{key}.std"] = torch.from_numpy(self.std[key].copy())
        return out

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, Tensor]) -> Normalizer:
        keys = {name.rsplit(".", 1)[0] for name in tensors}
        return cls(
            {k: tensors[f"{k}.mean"].numpy() for k in keys},
            {k: tensors[f"{k}.std"].numpy() for k in keys},
        )
