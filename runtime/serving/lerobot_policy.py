"""Serving a LeRobot policy: any ``lerobot`` ``PreTrainedPolicy`` saved with
``save_pretrained`` (a ``lerobot-train`` run's ``checkpoints/<step>/pretrained_model``), with
the pre- and post-processors saved next to it, behind the same ``ChunkPolicy`` interface as
rtvla's own policies (``rtvla serve checkpoint=lerobot:PATH``).

Per batch of requests: the raw observations (uint8 (h, w, 3) cameras become float (3, h, w)
in [0, 1], as lerobot's datasets and robots give them) and the instructions (as ``task``)
are stacked into one batch, run through the policy's own preprocessor (normalization,
tokenization, device), ``predict_action_chunk`` and its postprocessor (unnormalization), so
the chunk is in the robot's absolute action units. Batching across robots, the wire
protocol's checks and the robot side's safety are the server's and controller's, as for any
policy.

A LeRobot policy is not an rtvla flow model: it is sampled once per request, plainly. RTC
(``guided:*``, ``prefix``) and BID (``bid:<N>``) requests are refused with
``UnsupportedRequest``, and the metadata tells clients so (``PolicyInfo.sampling``), so
``rtvla run`` refuses those executors before the first tick.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from runtime.wire.info import PolicyInfo, UnsupportedRequest
from runtime.wire.protocol import ObservationRequest

log = logging.getLogger(__name__)

SAMPLING = ("plain",)  # what a policy that is not a flow model serves
FLOW_EXECUTORS = "rtc, rtc_hard, rtc_trained, bid"  # the executors that need more


class LeRobotChunkPolicy:
    """A ``ChunkPolicy`` around a lerobot ``PreTrainedPolicy`` and its processors."""

    def __init__(self, policy, preprocessor, postprocessor, *, model_id: str, fps: float) -> None:
        self.policy = policy.eval()
        self.preprocessor, self.postprocessor = preprocessor, postprocessor
        config = policy.config
        self.image_keys = tuple(config.image_features)
        self.features = {
            key: {"dtype": "uint8", "shape": (*feature.shape[1:], feature.shape[0])}
            if key in self.image_keys
            else {"dtype": "float32", "shape": tuple(feature.shape)}
            for key, feature in config.input_features.items()
        }  # the raw observation a driver sends: cameras (h, w, 3) uint8
        action_dim = config.output_features["action"].shape[0]
        chunk_length = len(self._predict([self._zeros()], ["warm up"])[0])  # H, as it predicts
        self._info = PolicyInfo(
            model_id, chunk_length, action_dim, fps, self.features, sampling=SAMPLING
        )

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def infer(self, requests: Sequence[ObservationRequest]) -> list[np.ndarray]:
        """One absolute float32 (H, A) chunk per request (plain sampling only)."""
        for r in requests:
            if r.sampling not in SAMPLING:
                raise UnsupportedRequest(
                    f"request {r.request_id}: sampling {r.sampling!r} needs a flow model, and "
                    f"{self.info.model_id} is a lerobot {self.policy.config.type} policy: "
                    f"executors {FLOW_EXECUTORS} need an rtvla flow policy; use executor=sync, "
                    "naive or ensemble"
                )
            missing = sorted(set(self.features) - set(r.observation))
            if missing:
                raise ValueError(
                    f"request {r.request_id}: the observation lacks {missing} (it has "
                    f"{sorted(r.observation)}), which the policy reads: send them, or rename the "
                    "robot's keys with rename_map"
                )
        chunks = self._predict([r.observation for r in requests], [r.instruction for r in requests])
        return [np.ascontiguousarray(c, dtype=np.float32) for c in chunks]

    def _predict(self, observations: list[dict], instructions: list[str]) -> np.ndarray:
        """(B, H, A) absolute actions for raw observations."""
        batch = {}
        for key in self.features:
            stacked = torch.from_numpy(np.stack([np.asarray(o[key]) for o in observations]))
            if key in self.image_keys:  # (B, h, w, 3) uint8 -> (B, 3, h, w) in [0, 1]
                stacked = stacked.permute(0, 3, 1, 2).float() / 255
            batch[key] = stacked.float()
        batch["task"] = list(instructions)
        with torch.inference_mode():
            actions = self.policy.predict_action_chunk(self.preprocessor(batch))  # (B, H, A)
            actions = self.postprocessor(actions)
        return actions.float().cpu().numpy()

    def _zeros(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(f["shape"], f["dtype"]) for k, f in self.features.items()}


def load_lerobot_policy(path: str | Path, device: str = "cpu", fps: float = 30.0
                        ) -> LeRobotChunkPolicy:  # fmt: skip
    """A lerobot policy folder (``save_pretrained``: config.json, model.safetensors and the
    ``policy_preprocessor.json`` / ``policy_postprocessor.json`` pipelines) on ``device``.
    lerobot does not store the control rate with a policy: ``fps`` is what clients are told."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    folder = Path(path)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"checkpoint=lerobot:{folder} is not a lerobot policy folder (config.json and "
            "model.safetensors, from save_pretrained): pass a lerobot-train run's "
            "checkpoints/<step>/pretrained_model"
        )
    if not (folder / "policy_preprocessor.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no policy_preprocessor.json: save the policy's processors there too "
            "(preprocessor.save_pretrained(folder), as lerobot-train does)"
        )
    config = PreTrainedConfig.from_pretrained(folder)
    config.device = device
    policy = get_policy_class(config.type).from_pretrained(folder, config=config)
    policy.to(device)
    overrides = {"device_processor": {"device": device}}
    preprocessor, postprocessor = make_pre_post_processors(
        config, pretrained_path=str(folder), preprocessor_overrides=overrides,
        postprocessor_overrides={"device_processor": {"device": "cpu"}},
    )  # fmt: skip
    log.info("loaded lerobot %s policy from %s on %s", config.type, folder, device)
    return LeRobotChunkPolicy(
        policy, preprocessor, postprocessor, model_id=f"lerobot-{config.type}-{folder.name}",
        fps=fps,
    )  # fmt: skip
