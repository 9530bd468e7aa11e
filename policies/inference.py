"""A trained flow policy over raw observations: what the serving side samples.

``FlowPolicy`` joins a policy kind's model (anything with ``velocity_fn(batch)`` and a
``config`` holding ``chunk_length``, ``action_dim`` and ``num_steps``), the preprocessor that
turns raw observations (feature key -> numpy array, as drivers observe them) and instructions
into the model's batch, and the action normalization. ``load_flow_policy`` reads any kind's
checkpoint into one. The samplers (plain, RTC-guided, prefix-conditioned) live on the serving
side (``runtime.serving.sampling``) and call ``velocity_fn`` and the action normalization.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from policies.features import ACTION, STATE
from policies.flow import VelocityFn
from policies.normalize import Normalizer
from policies.vision import resize_with_pad

Preprocess = Callable[[Sequence[Mapping[str, np.ndarray]], Sequence[str]], dict[str, Tensor]]


class HasObservation(Protocol):
    observation: dict[str, np.ndarray]
    instruction: str


class FlowPolicy:
    """A flow model with its preprocessor and action normalization (``FlowModel`` of the
    serving side, less the wire metadata, which the loader there adds)."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        normalizer: Normalizer,
        *,
        model_id: str,
        fps: float,
        features: dict[str, dict],
        joint_names: dict[str, tuple[str, ...]] | None = None,
        relative_mask: Sequence[bool] = (),
        observation_history: Sequence[int] = (),
    ) -> None:
        """features: the observations read, as the wire carries them; joint_names: the
        dataset's names of the state and action joints (``policies.checkpoint.joint_names``);
        relative_mask: the action dims the model predicts as offsets from the observed state
        (``action_offsets``; empty: absolute actions); observation_history: the earlier
        ticks it reads (``MetadataReply.observation_history``; empty: the current one)."""
        self.model = model.eval()
        self.joint_names = joint_names
        self.relative_mask = tuple(bool(m) for m in relative_mask)
        self.preprocess = preprocess
        self.normalizer = normalizer
        self.model_id, self.fps, self.features = model_id, fps, features
        self.observation_history = tuple(observation_history) or None
        self.chunk_length = model.config.chunk_length  # H
        self.action_dim = model.config.action_dim  # A
        self.device = next(model.parameters()).device

    def velocity_fn(self, requests: Sequence[HasObservation]) -> VelocityFn:
        batch = self.preprocess(
            [r.observation for r in requests], [r.instruction for r in requests]
        )
        return self.model.velocity_fn({k: v.to(self.device) for k, v in batch.items()})

    def action_offsets(self, requests: Sequence[HasObservation]) -> np.ndarray | None:
        """(B, A) what each request's actions are relative to: its observed state on the
        relative dims, 0 elsewhere; None for a model of absolute actions. The sampler adds
        them to the unnormalized chunk and subtracts them from a previous chunk."""
        if not any(self.relative_mask):
            return None
        mask = np.asarray(self.relative_mask, dtype=np.float32)
        return np.stack([np.asarray(r.observation[STATE], np.float32) * mask for r in requests])

    def normalize_actions(self, actions: np.ndarray) -> Tensor:
        tensor = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
        return self.normalizer.normalize(ACTION, tensor)

    def unnormalize_actions(self, actions: Tensor) -> np.ndarray:
        raw = self.normalizer.unnormalize(ACTION, actions.float())
        return raw.detach().cpu().numpy().astype(np.float32)


def load_flow_policy(path: str | Path, device: str | torch.device = "cpu") -> FlowPolicy:
    """Any flow policy kind's checkpoint (a run, ``checkpoints/step_N`` or an exported folder)."""
    from policies.checkpoint import (
        joint_names,
        load_checkpoint,
        read_json,
        resolve_checkpoint,
        wire_features,
    )

    folder = resolve_checkpoint(path)
    kind = read_json(folder / "config.json").get("kind", "vla")
    if kind == "state_flow":
        from policies.state_flow import load_state_flow

        return load_state_flow(folder, device)
    ckpt = load_checkpoint(folder, device)
    reads = (*ckpt.model.config.image_keys, STATE)  # not the dataset's other observations
    features = wire_features({k: v for k, v in ckpt.features.items() if k in reads})
    return FlowPolicy(
        ckpt.model,
        VLAPreprocessor(ckpt.model.config.image_keys, ckpt.normalizer,
                        ckpt.model.tokenize_instructions, ckpt.model.config.image_size),
        ckpt.normalizer,
        model_id=ckpt.model_id, fps=ckpt.fps, features=features,
        joint_names=joint_names(ckpt.features),
    )  # fmt: skip


class VLAPreprocessor:
    """Raw observations -> the VLA's batch (images float CHW in [0, 1], resized with padding
    to the policy's ``image_size``; state normalized; instruction tokens). The training
    collator (``policies.data.Collator``) calls ``batch`` with the dataset's images, so
    training and serving preprocess alike."""

    def __init__(
        self,
        image_keys: Sequence[str],
        normalizer: Normalizer,
        tokenize_instructions: Callable[[list[str]], tuple[Tensor, Tensor]],
        image_size: tuple[int, int],
    ) -> None:
        self.image_keys, self.normalizer = tuple(image_keys), normalizer
        self.tokenize_instructions = tokenize_instructions
        self.image_size = tuple(image_size)  # (H, W)

    def batch(
        self, images: Mapping[str, Tensor], state: Tensor, instructions: Sequence[str]
    ) -> dict[str, Tensor]:
        """images: key -> float (B, 3, h, w) in [0, 1], any (h, w); state (B, S) raw."""
        batch = {key: resize_with_pad(images[key], self.image_size) for key in self.image_keys}
        batch[STATE] = self.normalizer.normalize(STATE, state.float())
        batch["lang_tokens"], batch["lang_mask"] = self.tokenize_instructions(list(instructions))
        return batch

    def __call__(
        self, observations: Sequence[Mapping[str, np.ndarray]], instructions: Sequence[str]
    ) -> dict[str, Tensor]:
        images = {
            key: torch.from_numpy(np.stack([feature(o, key) for o in observations]))
            .permute(0, 3, 1, 2).float() / 255
            for key in self.image_keys
        }  # fmt: skip  # (B, 3, h, w) from uint8 (B, h, w, 3)
        state = torch.from_numpy(np.stack([feature(o, STATE) for o in observations]))
        return self.batch(images, state, instructions)


def feature(observation: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """observation[key], or an error saying what the policy needs."""
    try:
        return observation[key]
    except KeyError:
        raise ValueError(
            f"the observation has no {key!r} (it has {sorted(observation)}); "
            "the policy was trained with it: send it, or serve a policy trained on these features"
        ) from None
