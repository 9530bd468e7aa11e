"""A vision-language-action model with knowledge insulation.

pi0 (Black et al. 2024, "pi0: A Vision-Language-Action Flow Model for General Robot
Control"): a backbone reads [images, language, state] (``policies/backbone.py``) and an action
expert (``policies/action_expert.py``) denoises an (H, action_dim) chunk by flow matching
(``policies/flow.py``), attending to the backbone's keys/values layer by layer.

Knowledge insulation (Driess et al. 2025, "Knowledge Insulating Vision-Language-Action
Models: Train Fast, Run Fast, Generalize Better", Sec. 5): the backbone also predicts the
FAST tokens of the chunk (``policies/fast.py``) with a next-token loss, the expert reads
stop_grad(K, V) of the backbone, FAST and expert tokens never attend to each other, and

    loss = CE(FAST) + alpha * FM.

So the backbone learns from the discrete FAST loss only, and at inference the FAST head is
not decoded: the prefix is encoded once and the expert alone runs the Euler steps.
"""

import logging
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.action_expert import ActionExpert, SceneMixerExpert
from policies.backbone import Backbone, PrefixCache, SmallBackbone, get_feature
from policies.features import ACTION, ENV_STATE, GOAL_STATE, IMAGES, STATE
from policies.flow import VelocityFn, flow_matching_loss, interpolate, sample_tau
from policies.rtc import check_training_delay, prefix_flow_time, sample_training_delay
from policies.vision import KEYPOINT_STRIDES, VISION

LANGUAGE = ("words", "bytes")  # the small backbone's instruction tokens (SmallBackbone)

logger = logging.getLogger(__name__)

BACKBONES = ("small", "hf")
EXPERTS = ("transformer", "scene_mixer")  # VLAConfig.expert (or "auto": see there)


@dataclass
class VLAConfig:
    """Every hyperparameter of the VLA, one line each."""

    image_keys: tuple[str, ...] = (IMAGES + "front", IMAGES + "wrist")  # order
    image_size: tuple[int, int] = (96, 96)  # (H, W) every camera is resized to, with padding
    vision: str = "keypoints"  # image encoder: "keypoints" (spatial softmax) or "patch" tokens
    patch_size: int = 8  # vision=patch: image token side in pixels, 4k dividing image_size
    num_keypoints: int = 16  # vision=keypoints: tokens per camera
    keypoint_stride: int = 2  # vision=keypoints: keypoint maps are image_size / this (2, 4, 8)
    instruction_keypoints: int = 4  # vision=keypoints, backbone=small: more per camera, aimed
    # by the instruction (off otherwise)
    film: bool = True  # small backbone: the instruction FiLM-conditions the image stems (RT-1)
    expert_instruction: bool = True  # small backbone: the expert also reads a bag of its tokens
    augment_shift: int = 4  # training only: random image shifts of up to this many pixels
    state_dim: int = 6  # size of observation.state
    action_dim: int = 6  # size of one action
    chunk_length: int = 16  # H, actions per predicted chunk
    backbone: str = "small"  # "small": SmallBackbone from scratch; "hf": HFBackbone (a HF VLM)
    hf_model: str | None = None  # backbone=hf: local folder of a SmolVLM / Idefics3 model
    width: int = 128  # small backbone width
    depth: int = 4  # small backbone layers; the expert has one block per backbone layer
    num_heads: int = 4  # small backbone attention heads (head_dim = width // num_heads)
    expert_width: int = 128  # action expert width (even)
    mlp_ratio: float = 4.0  # MLP hidden width as a multiple of the block width
    language: str = "words"  # small backbone: "words" (hashed, policies/language.py) or "bytes"
    word_buckets: int = 1024  # language=words: hash vocabulary (the tasks' words never collide)
    max_lang_tokens: int = 16  # instruction length in tokens (words, bytes or the hf model's)
    fast_vocab_size: int = 1024  # FAST ids the head predicts; at least FastTokenizer.vocab_size
    max_fast_tokens: int = 48  # FAST tokens per chunk (FastTokenizer.encode_padded max_len)
    num_steps: int = 10  # Euler steps at inference
    time_alpha: float = 1.5  # flow time s ~ Beta(time_alpha, time_beta), tau = max_tau * (1 - s)
    time_beta: float = 1.0  # (pi0: Beta(1.5, 1), more mass near noise)
    max_tau: float = 0.999  # largest training flow time (1 would be clean data)
    insulation: bool = False  # knowledge insulation: the expert reads stop_grad(K, V) of the
    # backbone (with fast_loss; recipe=ki)
    fast_loss: bool = False  # FAST tokens and their CE in the backbone; False: flow only (pi0)
    alpha: float = 1.0  # weight of the flow-matching loss: loss = CE(FAST) + alpha * FM
    rtc_training_max_delay: int = 0  # training-time RTC: clean prefix of d ~ U{0..K} steps; 0: off
    rtc_training_zero_prob: float | None = None  # share of d = 0 (no prefix), the rest
    # d ~ U{1..K}; null: d ~ U{0..K}
    aux_env_state: float = 1.0  # weight of an auxiliary loss: the backbone predicts the scene
    # state (observation.environment_state); off without one, or with backbone=hf
    env_state_dim: int = 0  # size of observation.environment_state (0: the dataset has none)
    aux_goal: float = 0.0  # weight of an auxiliary loss: the backbone predicts the last state
    expert_scene: bool = False  # the expert reads the predicted scene state (needs aux_env_state)
    flow_samples: int = 1  # training: flow-matching samples (noise, time) per backbone pass
    expert: str = "auto"  # "transformer" (pi0's), "scene_mixer" (reads the scene state only) or
    # "auto": scene_mixer where the backbone predicts a scene state (aux_env_state), else
    # transformer
    expert_scene_teacher: float = 1.0  # training: share of examples whose expert reads the true
    # scene state (teacher forcing; off when the expert does not read the scene)

    def __post_init__(self) -> None:
        self.image_keys, self.image_size = tuple(self.image_keys), tuple(self.image_size)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r} is unknown: choose one of {BACKBONES}")
        if self.backbone == "small" and self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.vision not in VISION:
            raise ValueError(f"vision={self.vision!r} is unknown: choose one of {VISION}")
        if self.keypoint_stride not in KEYPOINT_STRIDES:
            raise ValueError(
                f"keypoint_stride={self.keypoint_stride} is not one of {KEYPOINT_STRIDES}"
            )
        if self.instruction_keypoints < 0:
            raise ValueError(
                f"instruction_keypoints={self.instruction_keypoints} is a count: give 0 or more"
            )
        if self.vision != "keypoints" or self.backbone != "small":
            self.instruction_keypoints = 0  # they aim the small backbone's keypoint maps
        if self.language not in LANGUAGE:
            raise ValueError(f"language={self.language!r} is unknown: choose one of {LANGUAGE}")
        if (
            self.backbone == "small"
            and self.vision == "patch"
            and (self.patch_size % 4 or any(s % self.patch_size for s in self.image_size))
        ):
            raise ValueError(
                f"patch_size={self.patch_size} must be a multiple of 4 dividing "
                f"image_size={list(self.image_size)}: set policy.image_size to multiples of it "
                f"(cameras of any size are resized to it with padding)"
            )
        if self.expert_width % 2:
            raise ValueError(f"expert_width={self.expert_width} must be even")
        check_training_delay(
            self.rtc_training_max_delay, self.rtc_training_zero_prob, self.chunk_length
        )
        if self.env_state_dim == 0 or self.backbone != "small":
            self.aux_env_state = 0.0  # needs a scene state and the small backbone's readout
        if self.flow_samples < 1:
            raise ValueError(f"flow_samples={self.flow_samples} must be 1 or more")
        if self.expert == "auto":  # read the scene where the backbone learns to predict one
            self.expert = "scene_mixer" if self.aux_env_state > 0 else "transformer"
        if self.expert not in EXPERTS:
            raise ValueError(
                f"expert={self.expert!r} is unknown: choose one of {EXPERTS} or 'auto'"
            )
        if self.reads_scene and self.aux_env_state <= 0:
            raise ValueError(
                "expert_scene=true and expert=scene_mixer read the scene state the backbone "
                "predicts, which needs aux_env_state > 0, a dataset with "
                "observation.environment_state and backbone=small: set expert_scene=false "
                "and expert=auto (or transformer)"
            )
        if not 0.0 <= self.expert_scene_teacher <= 1.0:
            raise ValueError(
                f"expert_scene_teacher={self.expert_scene_teacher} is a share in [0, 1] of the "
                "examples whose expert reads the true scene state"
            )
        if not self.reads_scene:
            self.expert_scene_teacher = 0.0  # no scene state read to teacher-force
        if self.aux_goal > 0 and self.backbone != "small":
            raise ValueError(f"aux_goal={self.aux_goal} needs backbone=small: set aux_goal=0")
        if self.insulation and not self.fast_loss:
            logger.warning(
                "insulation=True with fast_loss=False: no loss reaches the backbone, its features "
                "stay as initialised; set insulation=False for flow-only pi0-style training"
            )

    @property
    def reads_scene(self) -> bool:
        """The expert reads the scene state the backbone predicts."""
        return self.expert_scene or self.expert == "scene_mixer"


def make_backbone(config: VLAConfig) -> Backbone:
    """The backbone ``config.backbone`` names; for "hf", the pretrained weights in hf_model."""
    if config.backbone == "small":
        return SmallBackbone(config)
    if config.hf_model is None:
        raise ValueError(
            "backbone=hf needs hf_model=<folder of a SmolVLM / Idefics3 model>, e.g. one "
            "downloaded with `hf download HuggingFaceTB/SmolVLM-256M-Instruct --local-dir DIR`"
        )
    from policies.hf_backbone import HFBackbone  # transformers takes seconds to import

    return HFBackbone.from_pretrained(config, config.hf_model)


def make_attention_mask(prefix_valid: Tensor, fast_valid: Tensor, num_action_tokens: int) -> Tensor:
    """The attention mask of the token layout [prefix (P), FAST (F), actions (H)].

    prefix_valid (B, P) and fast_valid (B, F) are False at padding; returns (B, N, N) bool with
    N = P + F + H, True where query row i may attend to key column j:
      - every token reads the (non-padding) prefix; the prefix reads only itself, bidirectionally;
      - FAST tokens read the FAST tokens before them and themselves (causal);
      - action tokens read each other, bidirectionally;
      - FAST and action tokens never read each other (knowledge insulation), and no backbone
        token (prefix or FAST) reads the action tokens.
    """
    B, P = prefix_valid.shape
    H, device = num_action_tokens, prefix_valid.device
    lengths = torch.tensor([P, fast_valid.shape[1], H], device=device)
    segment = torch.repeat_interleave(torch.arange(3, device=device), lengths)  # (N,)
    q, k = segment[:, None], segment[None, :]  # 0 prefix, 1 FAST, 2 actions: (N, 1), (1, N)
    index = torch.arange(len(segment), device=device)
    causal = index[None, :] <= index[:, None]  # (N, N)
    allowed = (k == 0) | ((q == 1) & (k == 1) & causal) | ((q == 2) & (k == 2))  # (N, N)
    key_valid = torch.cat([prefix_valid, fast_valid, prefix_valid.new_ones(B, H)], dim=1)
    return allowed[None] & key_valid[:, None, :]  # (B, N, N)


def expert_rows(mask: Tensor, num_prefix: int, num_fast: int) -> Tensor:
    """Rows of the action tokens, columns [prefix, actions]: the expert's mask (B, H, P + H).

    The FAST columns are dropped: in these rows they are all False, and the expert's context
    (the prefix cache) holds no FAST keys.
    """
    rows = mask[:, num_prefix + num_fast :]  # (B, H, N)
    return torch.cat([rows[..., :num_prefix], rows[..., num_prefix + num_fast :]], dim=-1)


class VLA(nn.Module):
    """Backbone + FAST head + action expert; ``forward`` is the training loss and
    ``velocity_fn`` what the serving side's samplers integrate.

    Batch keys: ``observation.images.<cam>`` float (B, 3, h, w) in [0, 1];
    ``observation.state`` float (B, S) normalized; ``lang_tokens`` long (B, L) and
    ``lang_mask`` bool (B, L) from ``tokenize_instructions``; for training also ``action``
    float (B, H, A) normalized, ``action_is_pad`` bool (B, H) (optional), and, with
    ``fast_loss``, ``fast_tokens`` long (B, F) and ``fast_mask`` bool (B, F) from
    ``FastTokenizer.encode_padded``.
    """

    def __init__(self, config: VLAConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = make_backbone(config) if backbone is None else backbone
        self.expert = (
            SceneMixerExpert(config)
            if config.expert == "scene_mixer"
            else ActionExpert(
                config, self.backbone.num_layers, self.backbone.num_heads, self.backbone.head_dim
            )
        )
        if config.aux_env_state > 0:  # training only: the scene state read from the backbone
            self.aux_head = nn.Sequential(
                nn.RMSNorm(config.width), nn.Linear(config.width, config.env_state_dim)
            )
        if config.aux_goal > 0:  # training only: where the episode ends, read from the backbone
            self.goal_head = nn.Sequential(
                nn.RMSNorm(config.width), nn.Linear(config.width, config.state_dim)
            )

    def tokenize_instructions(self, instructions: list[str]) -> tuple[Tensor, Tensor]:
        """Instructions -> (lang_tokens long (B, L), lang_mask bool (B, L)), on CPU."""
        return self.backbone.tokenize_instructions(instructions)

    # -- losses ---------------------------------------------------------------------------------

    def joint_forward(
        self, batch: dict[str, Tensor], x_t: Tensor, tau: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """One pass over the whole token layout [prefix, FAST, actions].

        x_t: noisy actions (B, H, A); tau: flow time (B,) or (B, H). Returns the velocity
        (B, H, A) and the FAST logits (B, F, V) (None without ``fast_loss``).
        """
        velocity, fast_logits, _ = self._joint_forward(batch, x_t, tau)
        return velocity, fast_logits

    def _joint_forward(
        self, batch: dict[str, Tensor], x_t: Tensor, tau: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """joint_forward, plus the backbone's readout (B, C) (None where it has none)."""
        prefix, prefix_valid = self.backbone.embed_prefix(batch)  # (B, P, C), (B, P)
        B, P = prefix_valid.shape
        fast_tokens = None
        fast_valid = prefix_valid.new_zeros(B, 0)
        if self.config.fast_loss:
            fast_tokens = get_feature(batch, "fast_tokens")
            fast_valid = get_feature(batch, "fast_mask")
        mask = make_attention_mask(prefix_valid, fast_valid, x_t.shape[1])  # (B, N, N)
        num_backbone = P + fast_valid.shape[1]
        cache, fast_logits = self.backbone(
            prefix, prefix_valid, fast_tokens, mask[:, :num_backbone, :num_backbone]
        )
        readout = cache.readout
        cache = self._expert_inputs(cache, batch)
        if self.training and self.config.expert_scene_teacher > 0:
            cache = self._teacher_scene(cache, batch)
        if self.config.insulation:
            cache = cache.detach()
        rows = expert_rows(mask, P, fast_valid.shape[1])
        if len(x_t) != B:  # k flow samples per example, one backbone pass (flow_samples)
            k = len(x_t) // B
            cache, rows = cache.repeat(k), rows.repeat_interleave(k, dim=0)
        velocity = self.expert(cache, x_t, tau, rows)
        return velocity, fast_logits, readout

    def forward(
        self, batch: dict[str, Tensor], noise: Tensor | None = None, tau: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss: (loss, {"loss", "fm", "fast_ce", "aux_env", "aux_goal"}), the terms.

        noise (B, H, A) and tau (B,) are drawn when not given; with flow_samples = k > 1
        each example's actions are repeated k times in a row and noise, tau have B k rows
        (k flow-matching samples on one backbone pass). With rtc_training_max_delay = K
        > 0, each example gets a delay d ~ U{0..K}: its first d actions are clean (tau = 1) and
        the FM loss covers the rest only (training-time RTC). Padded actions (action_is_pad)
        are out of the FM loss. With aux_env_state > 0 the backbone's readout also regresses
        the normalized observation.environment_state (training only; the expert reads the
        backbone, so what the readout must know, where each target is, reaches the actions).
        With aux_goal > 0 it regresses the normalized state of the episode's last frame
        (``goal_state``, hindsight): from the first frames on, where the arm will end depends
        on the instruction and the scene only, not on the arm's pose, so the backbone must
        ground the instruction (a pose-only shortcut cannot fit it).
        """
        cfg = self.config
        actions = get_feature(batch, ACTION)  # (B, H, A)
        if actions.shape[1:] != (cfg.chunk_length, cfg.action_dim):
            raise ValueError(
                f"action has shape {tuple(actions.shape)}, the policy expects "
                f"(B, {cfg.chunk_length}, {cfg.action_dim}): set chunk_length / action_dim"
            )
        is_pad = batch.get("action_is_pad")
        if is_pad is None:
            is_pad = torch.zeros(actions.shape[:2], dtype=torch.bool, device=actions.device)
        if cfg.flow_samples > 1:  # each example k times: k (noise, tau) draws, B -> B k
            actions = actions.repeat_interleave(cfg.flow_samples, dim=0)
            is_pad = is_pad.repeat_interleave(cfg.flow_samples, dim=0)
        B, H = actions.shape[:2]
        noise = torch.randn_like(actions) if noise is None else noise
        if tau is None:
            tau = sample_tau(
                (B,), cfg.time_alpha, cfg.time_beta, cfg.max_tau, device=actions.device
            )
        loss_mask = ~is_pad  # (B, H)
        if cfg.rtc_training_max_delay > 0:
            delay = sample_training_delay(
                B, cfg.rtc_training_max_delay, cfg.rtc_training_zero_prob, actions.device
            )
            tau, postfix = prefix_flow_time(tau, delay, H)  # (B, H), (B, H)
            loss_mask = loss_mask & postfix
        velocity, fast_logits, readout = self._joint_forward(
            batch, interpolate(actions, noise, tau), tau
        )
        fm = flow_matching_loss(velocity, actions, noise, loss_mask)
        terms = {"fm": fm}
        loss = cfg.alpha * fm
        if fast_logits is not None:
            terms["fast_ce"] = self._fast_loss(fast_logits, batch)
            loss = loss + terms["fast_ce"]
        if cfg.aux_env_state > 0:
            target = get_feature(batch, ENV_STATE)  # (B, E) normalized
            terms["aux_env"] = F.mse_loss(self.aux_head(readout), target)
            loss = loss + cfg.aux_env_state * terms["aux_env"]
        if cfg.aux_goal > 0:
            target = get_feature(batch, GOAL_STATE)  # (B, S) normalized
            terms["aux_goal"] = F.mse_loss(self.goal_head(readout), target)
            loss = loss + cfg.aux_goal * terms["aux_goal"]
        terms["loss"] = loss
        return loss, terms

    def _fast_loss(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Next-token cross-entropy of the FAST tokens, logits (B, F, V), over the valid tokens.

        Chunks running past their episode's end are tokenized as lerobot pads them (the last
        action repeated: holding still), which is a fine target, so they stay in this loss.
        Chunks padded from their first action on (``failure_actions=drop``) leave it.
        """
        targets = batch["fast_tokens"]  # (B, F)
        mask = batch["fast_mask"]  # (B, F)
        if "action_is_pad" in batch:
            mask = mask & ~batch["action_is_pad"][:, :1]
        mask = mask.to(logits.dtype)
        ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, F)
        return (ce * mask).sum() / mask.sum().clamp(min=1.0)

    # -- inference ------------------------------------------------------------------------------

    def encode_prefix(self, batch: dict[str, Tensor]) -> PrefixCache:
        """Run the backbone over the prefix alone: its keys/values at every layer."""
        prefix, prefix_valid = self.backbone.embed_prefix(batch)  # (B, P, C), (B, P)
        mask = make_attention_mask(prefix_valid, prefix_valid.new_zeros(len(prefix), 0), 0)
        cache, _ = self.backbone(prefix, prefix_valid, None, mask)
        return self._expert_inputs(cache, batch)

    def _expert_inputs(self, cache: PrefixCache, batch: dict[str, Tensor]) -> PrefixCache:
        """The cache carrying what the expert reads besides the keys and values: the
        instruction's token ids, and with ``expert_scene`` the predicted scene state (the aux
        head on the readout, detached: only the scene-state loss trains it) and the robot state."""
        if self.expert.reads_instruction:
            cache = replace(cache, instruction=get_feature(batch, "lang_tokens"))
        if self.config.reads_scene:
            scene = self.aux_head(cache.readout).detach()  # (B, E), normalized
            cache = replace(cache, scene=torch.cat([scene, get_feature(batch, STATE)], dim=-1))
        return cache

    def _teacher_scene(self, cache: PrefixCache, batch: dict[str, Tensor]) -> PrefixCache:
        """Teacher forcing of the scene the expert reads: a random ``expert_scene_teacher``
        share of the examples read the true (normalized) scene state instead of the
        prediction, so the expert learns to act on the scene from the first step, as a state
        policy does, while the rest teach it to act on the backbone's prediction, which is
        all it reads at inference."""
        E = self.config.env_state_dim
        predicted = cache.scene[:, :E]
        true = get_feature(batch, ENV_STATE).to(predicted.dtype)
        teach = torch.rand(len(true), 1, device=true.device) < self.config.expert_scene_teacher
        scene = torch.where(teach, true, predicted)
        return replace(cache, scene=torch.cat([scene, cache.scene[:, E:]], dim=-1))

    def denoise_step(self, cache: PrefixCache, x_t: Tensor, tau: Tensor) -> Tensor:
        """Velocity v (B, H, A) at noisy actions x_t (B, H, A) and flow time tau (B,) or (B, H),
        given an encoded prefix; differentiable w.r.t. x_t (RTC guidance takes VJPs through it)."""
        B, P = cache.valid.shape
        mask = make_attention_mask(cache.valid, cache.valid.new_zeros(B, 0), x_t.shape[1])
        return self.expert(cache, x_t, tau, expert_rows(mask, P, 0))

    def velocity_fn(self, batch: dict[str, Tensor]) -> VelocityFn:
        """Encode the prefix once (without a graph) and return v = f(x_t, tau) for samplers."""
        with torch.no_grad():
            cache = self.encode_prefix(batch)
        return partial(self.denoise_step, cache)
