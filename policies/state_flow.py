"""A state-based flow-matching policy: joint state, scene state and instruction in, a chunk out.

It reads ``observation.state``, ``observation.environment_state`` (lerobot's name for the
low-dimensional scene state: here the poses of objects, targets and bins) and the instruction,
so it needs no rendering and trains in minutes on a CPU. The flow head is an MLP-mixer over
the H action tokens, like the policies of the RTC paper's Kinetix experiments (Black,
Galliker, Levine 2025, Sec. 6): each block mixes across time, then across channels, and is
modulated (adaLN, as in DiT) by the observation embedding plus the token's flow time. Flow
time is per token, so the same network serves plain, RTC-guided (the VJP runs through it)
and training-time RTC (prefix-conditioned) sampling.

With ``history_offsets`` (ticks < 0, e.g. ``[-8, -4]``) it also reads how the state and the
scene state changed since those earlier ticks (``current - earlier``, normalized by the
changes' own spread in the dataset), as diffusion policy reads two observation frames: a
state alone cannot tell "at rest, about to lift" from "just started lifting". The controller
sends those ticks' observations (``runtime.robot.controller.ObservationHistory``).

The instruction is a bag of hashed words (``HASH_BUCKETS`` embeddings, mean-pooled): the
tasks name a colour and an object, which a bag of words carries exactly.

Anatomy, as every policy kind: config, build, loss, sample, checkpoint extras.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from policies.features import ACTION, ENV_STATE, HISTORY_SUFFIX, STATE
from policies.flow import VelocityFn, flow_matching_loss, interpolate, sample_tau
from policies.language import HASH_BUCKETS, words
from policies.normalize import Normalizer
from policies.rtc import (
    check_training_delay,
    lag_chunk,
    prefix_flow_time,
    sample_training_delay,
)

MAX_WORDS = 16  # words of an instruction the policy reads


# ---- config ---------------------------------------------------------------------------------


@dataclass
class StateFlowConfig:
    """Every hyperparameter of the state-based flow policy, one line each."""

    state_dim: int = 6  # size of observation.state
    env_state_dim: int = 9  # size of observation.environment_state
    action_dim: int = 6  # size of one action
    chunk_length: int = 16  # H, actions per predicted chunk
    width: int = 128  # channels of the observation embedding and of each action token
    depth: int = 4  # mixer blocks
    token_mlp_ratio: float = 2.0  # hidden width of the token-mixing MLP, as a multiple of H
    channel_mlp_ratio: float = 2.0  # hidden width of the channel-mixing MLP / width
    num_steps: int = 10  # Euler steps at inference
    time_alpha: float = 1.5  # flow time s ~ Beta(time_alpha, time_beta), tau = max_tau (1 - s)
    time_beta: float = 1.0
    max_tau: float = 0.999  # largest training flow time
    rtc_training_max_delay: int = 0  # training-time RTC: clean prefix of d ~ U{0..K}; 0: off
    rtc_training_zero_prob: float | None = None  # share of d = 0 (no prefix), the rest
    # d ~ U{1..K}; null: d ~ U{0..K}
    rtc_training_lag_prob: float = 0.0  # share of the prefixed examples whose prefix lags: the
    # recorded chunk delayed by a lag ~ U(0, rtc_training_max_lag) ticks, while the rest of the
    # chunk is the recording's, so the policy learns to correct a stale prefix (as an older
    # chunk's plan is) from the observation instead of carrying it on; 0: every prefix is the
    # recording's
    rtc_training_max_lag: float = 0.0  # the largest such lag, in ticks
    relative_actions: bool = (
        False  # predict joint targets as offsets from the current state (not the gripper)
    )
    relative_mask: tuple[bool, ...] = ()  # from the dataset: the action dims that are relative
    history_offsets: tuple[int, ...] = ()  # earlier ticks read too (< 0, oldest first); (): none

    def __post_init__(self) -> None:
        self.relative_mask = tuple(bool(m) for m in self.relative_mask)
        self.history_offsets = tuple(int(o) for o in self.history_offsets)
        offsets = self.history_offsets
        if any(o >= 0 for o in offsets) or any(b <= a for a, b in itertools.pairwise(offsets)):
            raise ValueError(
                f"history_offsets={list(offsets)} must be negative ticks, increasing (oldest "
                "first), e.g. [-8, -4]"
            )
        check_training_delay(
            self.rtc_training_max_delay, self.rtc_training_zero_prob, self.chunk_length
        )
        if not 0.0 <= self.rtc_training_lag_prob <= 1.0 or self.rtc_training_max_lag < 0:
            raise ValueError(
                f"rtc_training_lag_prob={self.rtc_training_lag_prob} must be in [0, 1] and "
                f"rtc_training_max_lag={self.rtc_training_max_lag} >= 0 (ticks)"
            )
        if self.rtc_training_lag_prob > 0 and not (
            self.rtc_training_max_delay > 0 and self.rtc_training_max_lag > 0
        ):
            raise ValueError(
                "rtc_training_lag_prob > 0 lags the training-time RTC prefix: set "
                "rtc_training_max_delay=K > 0 and rtc_training_max_lag > 0 (ticks) too"
            )


HISTORY_KEYS = (STATE + HISTORY_SUFFIX, ENV_STATE + HISTORY_SUFFIX)  # (T, S) and (T, E)


class StatePreprocessor:
    """Raw observations and instructions -> the model's inputs; training's collator and the
    server both call it, so a policy sees exactly what it was trained on. ``history``: the
    policy reads ``HISTORY_KEYS`` too (the normalizer then has their changes' spread)."""

    def __init__(self, normalizer: Normalizer, history: bool = False) -> None:
        self.normalizer, self.history = normalizer, history

    def __call__(
        self,
        state: Tensor,
        env_state: Tensor,
        instructions: Sequence[str],
        history: Sequence[Tensor] = (),
    ) -> dict[str, Tensor]:
        """state (B, S) and env_state (B, E) raw float, with ``history`` the same at the earlier
        ticks ((B, T, S), (B, T, E)); returns normalized tensors + word ids (+ "history": the
        normalized changes since those ticks, (B, T * (S + E)))."""
        ids = torch.zeros(len(instructions), MAX_WORDS, dtype=torch.long)  # (B, W)
        for row, text in zip(ids, instructions, strict=True):
            w = words(text, MAX_WORDS)
            row[: len(w)] = torch.tensor(w, dtype=torch.long)
        batch = {
            STATE: self.normalizer.normalize(STATE, state.float()),
            ENV_STATE: self.normalizer.normalize(ENV_STATE, env_state.float()),
            "words": ids,
        }
        if self.history:
            changes = [
                self.normalizer.normalize(key, now.float()[:, None, :] - past.float())
                for key, now, past in zip(HISTORY_KEYS, (state, env_state), history, strict=True)
            ]  # (B, T, S), (B, T, E)
            batch["history"] = torch.cat(changes, dim=-1).flatten(1)
        return batch

    def observations(
        self, observations: Sequence[dict[str, np.ndarray]], instructions: Sequence[str]
    ) -> dict[str, Tensor]:
        """The serving entry: one observation dict of raw arrays per request."""
        stacked = {}
        for key in (STATE, ENV_STATE, *(HISTORY_KEYS if self.history else ())):
            try:
                stacked[key] = torch.from_numpy(
                    np.stack([np.asarray(o[key]) for o in observations])
                )
            except KeyError:
                have = sorted(observations[0]) if observations else []
                raise ValueError(
                    f"the observation has no {key!r} (it has {have}): the state policy reads "
                    f"{STATE} and {ENV_STATE}; record them (rtvla record writes both) or serve "
                    "a policy trained on these features (the controller adds the "
                    f"'{HISTORY_SUFFIX}' ones when the policy's metadata asks for them)"
                ) from None
        history = [stacked[k] for k in HISTORY_KEYS] if self.history else ()
        return self(stacked[STATE], stacked[ENV_STATE], instructions, history)


# ---- build ----------------------------------------------------------------------------------


class MixerBlock(nn.Module):
    """adaLN-modulated MLP-mixer block over (B, H, C) action tokens."""

    def __init__(self, config: StateFlowConfig) -> None:
        super().__init__()
        H, C = config.chunk_length, config.width
        self.norm1 = nn.LayerNorm(C, elementwise_affine=False)
        self.token_mlp = nn.Sequential(
            nn.Linear(H, int(H * config.token_mlp_ratio)),
            nn.GELU(),
            nn.Linear(int(H * config.token_mlp_ratio), H),
        )
        self.norm2 = nn.LayerNorm(C, elementwise_affine=False)
        self.channel_mlp = nn.Sequential(
            nn.Linear(C, int(C * config.channel_mlp_ratio)),
            nn.GELU(),
            nn.Linear(int(C * config.channel_mlp_ratio), C),
        )
        self.modulation = nn.Linear(C, 6 * C)  # shift, scale, gate for both MLPs
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, H, C), cond (B, H, C) or, one for every token, (B, 1, C) -> (B, H, C)."""
        s1, b1, g1, s2, b2, g2 = self.modulation(cond).chunk(6, dim=-1)  # each like cond
        h = self.norm1(x) * (1 + s1) + b1
        x = x + g1 * self.token_mlp(h.transpose(1, 2)).transpose(1, 2)
        h = self.norm2(x) * (1 + s2) + b2
        return x + g2 * self.channel_mlp(h)


def time_embedding(tau: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of flow time (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-np.log(1000.0) * torch.arange(half, device=tau.device) / half)
    angles = tau[..., None].float() * 1000.0 * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class StateFlow(nn.Module):
    """The state-based flow policy: ``velocity(batch, x_tau, tau)`` and its training loss."""

    def __init__(self, config: StateFlowConfig) -> None:
        super().__init__()
        self.config = config
        C = config.width
        self.words = nn.EmbeddingBag(HASH_BUCKETS, C, mode="mean", padding_idx=0)
        low_dim = config.state_dim + config.env_state_dim
        self.obs = nn.Sequential(
            nn.Linear(low_dim * (1 + len(config.history_offsets)) + C, C),
            nn.GELU(),
            nn.Linear(C, C),
            nn.GELU(),
            nn.Linear(C, C),
        )
        self.time = nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, C))
        self.action_in = nn.Linear(config.action_dim, C)
        self.position = nn.Parameter(torch.randn(config.chunk_length, C) * 0.02)
        self.blocks = nn.ModuleList(MixerBlock(config) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(C)
        self.action_out = nn.Linear(C, config.action_dim)

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """The observation embedding (B, C), computed once per chunk."""
        lang = self.words(batch["words"])  # (B, C)
        history = [batch["history"]] if self.config.history_offsets else []
        return self.obs(torch.cat([batch[STATE], batch[ENV_STATE], *history, lang], dim=-1))

    def velocity(self, obs: Tensor, x: Tensor, tau: Tensor) -> Tensor:
        """v(x_tau, tau | obs): obs (B, C), x (B, H, A), tau (B,) or (B, H) -> (B, H, A)."""
        # One flow time per chunk (plain and guided sampling, most training): the conditioning
        # is the same for every token, so it and the blocks' modulation are computed once.
        tau = tau[:, None] if tau.ndim == 1 else tau  # (B, 1) or (B, H)
        cond = obs[:, None, :] + self.time(time_embedding(tau, self.config.width))  # (B, 1|H, C)
        h = self.action_in(x) + self.position  # (B, H, C)
        for block in self.blocks:
            h = block(h, cond)
        return self.action_out(self.norm_out(h))

    # ---- loss -----------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss: (loss, {"loss", "fm"}). With rtc_training_max_delay = K > 0 each
        example's first d ~ U{0..K} actions are clean (tau = 1) and out of the loss."""
        cfg = self.config
        actions = batch[ACTION]  # (B, H, A), normalized
        B, H = actions.shape[:2]
        if actions.shape[1:] != (cfg.chunk_length, cfg.action_dim):
            raise ValueError(
                f"action has shape {tuple(actions.shape)}, the policy expects "
                f"(B, {cfg.chunk_length}, {cfg.action_dim}): set chunk_length / action_dim"
            )
        mask = ~batch["action_is_pad"]  # (B, H)
        noise = torch.randn_like(actions)
        tau = sample_tau((B,), cfg.time_alpha, cfg.time_beta, cfg.max_tau, device=actions.device)
        if cfg.rtc_training_max_delay > 0:
            delay = sample_training_delay(
                B, cfg.rtc_training_max_delay, cfg.rtc_training_zero_prob, actions.device
            )
            tau, postfix = prefix_flow_time(tau, delay, H)  # (B, H), (B, H)
            mask = mask & postfix
        x = interpolate(actions, noise, tau)  # the prefix (tau = 1) is the recording
        if cfg.rtc_training_lag_prob > 0:
            lagging = torch.rand(B, device=actions.device) < cfg.rtc_training_lag_prob
            lag = torch.rand(B, device=actions.device) * cfg.rtc_training_max_lag * lagging
            x = torch.where(postfix[..., None], x, lag_chunk(actions, lag))
        v = self.velocity(self.encode(batch), x, tau)
        fm = flow_matching_loss(v, actions, noise, mask)
        return fm, {"loss": fm, "fm": fm}

    # ---- sample ---------------------------------------------------------------------------

    def velocity_fn(self, batch: dict[str, Tensor]) -> VelocityFn:
        """Encode the observations once; v(x, tau) is differentiable w.r.t. x (RTC's VJP)."""
        obs = self.encode(batch)
        return lambda x, tau: self.velocity(obs, x, tau)


# ---- checkpoint extras ----------------------------------------------------------------------

KIND = "state_flow"  # config.json "kind" of its checkpoints
NORMALIZED = (STATE, ENV_STATE, ACTION)
CONFIG_KEYS = {f.name for f in dataclasses.fields(StateFlowConfig)}


def state_flow_config(features: dict[str, dict], policy: Mapping) -> StateFlowConfig:
    """The config for a dataset's features and the ``policy/`` config group entry."""
    if ENV_STATE not in features:
        raise ValueError(
            f"the dataset has no {ENV_STATE} (it has {sorted(features)}): the state policy reads "
            "the scene state; record the dataset with this version of rtvla record (render=false "
            "is enough), or train policy=vla from the cameras"
        )
    unknown = set(policy) - CONFIG_KEYS - {"name"}
    if unknown:
        raise ValueError(f"policy config keys {sorted(unknown)} are unknown; valid: {CONFIG_KEYS}")
    return StateFlowConfig(
        **{k: v for k, v in policy.items() if k in CONFIG_KEYS},
        state_dim=features[STATE]["shape"][0],
        env_state_dim=features[ENV_STATE]["shape"][0],
        action_dim=features[ACTION]["shape"][0],
        relative_mask=relative_mask(features) if policy.get("relative_actions") else (),
    )


def relative_mask(features: dict[str, dict]) -> tuple[bool, ...]:
    """Which action dims ``relative_actions`` makes offsets from the state: every joint but a
    gripper (whose command is an opening, not a place to go). Needs the state and the action
    to name the same joints in the same order."""
    state, action = features[STATE].get("names"), features[ACTION].get("names")
    if not action or list(state or []) != list(action):
        raise ValueError(
            f"policy.relative_actions=true needs {STATE} and {ACTION} to name the same joints in "
            f"the same order (they name {state} and {action}): train with relative_actions=false"
        )
    return tuple("gripper" not in str(name).lower() for name in action)


def action_offsets(mask: Sequence[bool], state: np.ndarray | Tensor):
    """The offsets relative actions are taken from: state (..., A) on the masked dims, else 0."""
    if isinstance(state, Tensor):
        return state * torch.as_tensor(mask, dtype=state.dtype, device=state.device)
    return np.asarray(state, dtype=np.float32) * np.asarray(mask, dtype=np.float32)


class StateCollator:
    """Dataset items -> the training batch, through the serving preprocessor."""

    def __init__(
        self,
        preprocessor: StatePreprocessor,
        instruction: str = "task",
        relative_mask: Sequence[bool] = (),
    ) -> None:
        """relative_mask: the action dims taken as offsets from the state (relative_actions)."""
        self.preprocessor, self.instruction = preprocessor, instruction
        self.relative_mask = tuple(relative_mask)

    def __call__(self, items: list[dict]) -> dict[str, Tensor]:
        from policies.data import instruction_of

        state = torch.stack([it[STATE] for it in items])  # (B, S)
        history = ([torch.stack([it[k] for it in items]) for k in HISTORY_KEYS]
                   if self.preprocessor.history else ())  # fmt: skip  # (B, T, S), (B, T, E)
        batch = self.preprocessor(
            state,
            torch.stack([it[ENV_STATE] for it in items]),  # (B, E)
            [instruction_of(it, self.instruction) for it in items],
            history,
        )
        actions = torch.stack([it[ACTION] for it in items])  # (B, H, A)
        if self.relative_mask:
            actions = actions - action_offsets(self.relative_mask, state)[:, None, :]
        batch[ACTION] = self.preprocessor.normalizer.normalize(ACTION, actions)
        batch["action_is_pad"] = torch.stack([it["action_is_pad"] for it in items])  # (B, H)
        return batch


def checkpoint_meta(config: StateFlowConfig) -> dict:
    """What config.json holds for this kind, beside fps, features and the training config."""
    return {"kind": KIND, "state_flow_config": dataclasses.asdict(config)}


def write_extra(normalizer: Normalizer) -> Callable[[Path], None]:
    """The checkpoint's extra files: the normalizer of state, scene state and actions."""
    from safetensors.torch import save_file

    return lambda folder: save_file(normalizer.state_dict(), folder / "normalizer.safetensors")


def load_state_flow(folder: Path, device: str | torch.device = "cpu"):
    """A state-flow checkpoint folder as a ``policies.inference.FlowPolicy``."""

    from policies.checkpoint import (
        checkpoint_model_id,
        joint_names,
        load_normalizer,
        load_weights,
        read_json,
        wire_features,
    )
    from policies.inference import FlowPolicy

    meta = read_json(folder / "config.json")
    model = StateFlow(StateFlowConfig(**meta["state_flow_config"]))
    load_weights(model, folder / "model.safetensors")
    normalizer = load_normalizer(folder / "normalizer.safetensors")
    mask = model.config.relative_mask if model.config.relative_actions else ()
    offsets = model.config.history_offsets
    features = wire_features({k: v for k, v in meta["features"].items()
                              if k in (STATE, ENV_STATE)})  # fmt: skip
    if offsets:  # the same features at the earlier ticks, stacked (T, ...)
        for key in (STATE, ENV_STATE):
            shape = (len(offsets), *features[key]["shape"])
            features[key + HISTORY_SUFFIX] = {**features[key], "shape": shape}
    return FlowPolicy(
        model.to(device), StatePreprocessor(normalizer, bool(offsets)).observations, normalizer,
        model_id=checkpoint_model_id(folder), fps=meta["fps"], features=features,
        joint_names=joint_names(meta["features"]),
        relative_mask=mask, observation_history=offsets,
    )  # fmt: skip
