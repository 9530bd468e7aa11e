"""Training a flow policy (``policy=vla`` or ``policy=state_flow``) from a LeRobotDataset.

Each kind's ``build`` turns the dataset into a ``policies.trainer.Setup``: the model, the
training items (decoded into memory, or lerobot's own per-item queries with ``data=lerobot``),
the collator (whose preprocessing is the serving preprocessor's) and the checkpoint contents.
``policies.trainer.fit`` runs the optimization, resume, EMA and checkpoints for all kinds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from policies import state_flow
from policies.checkpoint import vla_checkpoint_parts
from policies.data import (
    Collator,
    InMemoryChunks,
    Renamed,
    action_chunks,
    camera_keys,
    check_instruction_source,
    open_dataset,
    rename_features,
)
from policies.fast import FastTokenizer
from policies.features import ACTION, ENV_STATE, STATE
from policies.inference import VLAPreprocessor
from policies.normalize import Normalizer
from policies.trainer import Setup, fit
from policies.vla import VLA, VLAConfig

POLICY_KEYS = {f.name for f in dataclasses.fields(VLAConfig)}
KINDS = ("vla", "state_flow")  # flow policy kinds built here (high_level: hierarchy_train)


def vla_config(features: dict[str, dict], policy: Mapping) -> VLAConfig:
    """The VLA config for a dataset's features (under the policy's names) and the ``policy/``
    config group entry; cameras of any sizes (the policy resizes them to its image_size)."""
    cams = camera_keys(features)
    if not cams:
        raise ValueError(
            "the dataset has no camera features (observation.images.*): the VLA needs one "
            "(policy=state_flow needs none)"
        )
    unknown = set(policy) - POLICY_KEYS - {"name"}
    if unknown:
        raise ValueError(
            f"policy config keys {sorted(unknown)} are unknown; valid: {sorted(POLICY_KEYS)}"
        )
    return VLAConfig(
        **{k: v for k, v in policy.items() if k in POLICY_KEYS},
        image_keys=cams,
        state_dim=features[STATE]["shape"][0],
        action_dim=features[ACTION]["shape"][0],
        env_state_dim=features[ENV_STATE]["shape"][0] if ENV_STATE in features else 0,
    )


def train(cfg: Mapping) -> dict:
    """Train (or resume) a run described by the resolved ``configs/train.yaml``; returns figures."""
    check_instruction_source(_features(cfg["dataset"]), cfg["instruction"])
    _failure_actions(cfg)
    lookahead = cfg.get("instruction_lookahead_s") or 0.0
    if lookahead < 0 or (lookahead and cfg["instruction"] == "task"):
        raise ValueError(
            f"instruction_lookahead_s={lookahead}: give 0 or more seconds, and only with "
            "instruction=step, hierarchy or hierarchy+task (the task does not change in an episode)"
        )
    kind = cfg["policy"].get("name", "vla")
    if kind not in KINDS:
        raise ValueError(f"policy={kind} is unknown: choose one of {KINDS}")
    figures, _ = fit(cfg, lambda device: build(cfg, kind, device))
    return figures


def build(cfg: Mapping, kind: str, device: torch.device) -> Setup:
    """The training setup of a flow policy kind on ``cfg["dataset"]``."""
    policy_cfg = dict(cfg["policy"])
    H = policy_cfg["chunk_length"]
    dataset = open_dataset(cfg["dataset"], chunk_length=H)
    rename = dict(cfg.get("rename_map") or {})
    features = {k: {**v, "shape": tuple(v["shape"])}
                for k, v in rename_features(dataset.meta.features, rename).items()}  # fmt: skip
    stats = {rename.get(k, k): v for k, v in dataset.meta.stats.items()}
    fps = dataset.meta.fps
    label_shift = round(float(cfg.get("instruction_lookahead_s") or 0.0) * fps)
    drop = _failure_actions(cfg)
    if label_shift and cfg["data"] != "memory":
        raise ValueError("instruction_lookahead_s needs data=memory (it reads the labels of a "
                         "later frame of the decoded dataset)")  # fmt: skip
    if kind == "state_flow":
        config = state_flow.state_flow_config(features, policy_cfg)
        normalizer = Normalizer.from_stats(stats, state_flow.NORMALIZED)
        for option, on in (("relative_actions", config.relative_actions),
                           ("history_offsets", config.history_offsets)):  # fmt: skip
            if on and cfg["data"] != "memory":
                raise ValueError(f"policy.{option} needs data=memory (its statistics are "
                                 "computed over the decoded dataset)")  # fmt: skip
        items = (InMemoryChunks(dataset, H, (), rename_map=rename,
                                history_offsets=config.history_offsets, label_shift=label_shift,
                                drop_failure_actions=drop)
                 if cfg["data"] == "memory" else Renamed(dataset, rename))  # fmt: skip
        if config.relative_actions:  # normalize the offsets, not the absolute targets
            mean, std = items.relative_action_stats(config.relative_mask)
            normalizer = Normalizer({**normalizer.mean, ACTION: mean},
                                    {**normalizer.std, ACTION: std})  # fmt: skip
        if config.history_offsets:  # the spread of the changes since the earlier frames
            changes = items.history_change_stats()
            normalizer = Normalizer(
                {**normalizer.mean, **{k: mean for k, (mean, _) in changes.items()}},
                {**normalizer.std, **{k: std for k, (_, std) in changes.items()}},
            )
        return Setup(
            model=state_flow.StateFlow(config),
            items=items,
            collate=state_flow.StateCollator(
                state_flow.StatePreprocessor(normalizer, bool(config.history_offsets)),
                cfg["instruction"],
                config.relative_mask if config.relative_actions else (),
            ),
            meta={"fps": fps, **state_flow.checkpoint_meta(config), "features": features},
            write_extra=state_flow.write_extra(normalizer),
        )
    config = vla_config(features, policy_cfg)
    keys = (STATE, ACTION, ENV_STATE) if config.aux_env_state > 0 else (STATE, ACTION)
    normalizer = Normalizer.from_stats(stats, keys)
    fast = _fast_tokenizer(cfg, dataset, normalizer, config) if config.fast_loss else None
    model = VLA(config).to(device)
    meta, write_extra = vla_checkpoint_parts(model, normalizer, fast, features, fps)
    preprocessor = VLAPreprocessor(
        config.image_keys, normalizer, model.tokenize_instructions, config.image_size
    )
    collate = Collator(
        preprocessor, cfg["instruction"], fast, config.max_fast_tokens, goal=config.aux_goal > 0
    )
    if config.aux_goal > 0 and cfg["data"] != "memory":
        raise ValueError(f"policy.aux_goal={config.aux_goal} needs data=memory (it reads each "
                         "episode's last state from the decoded dataset)")  # fmt: skip
    if cfg["data"] == "memory":
        items = InMemoryChunks(dataset, H, config.image_keys, config.image_size, rename,
                               label_shift=label_shift, drop_failure_actions=drop)  # fmt: skip
    else:
        items = Renamed(dataset, rename)
    return Setup(
        model=model,
        items=items,
        collate=collate,
        meta=meta,
        write_extra=write_extra,
    )


def _failure_actions(cfg: Mapping) -> bool:
    """Whether ``failure_actions`` drops the injected failures' actions (checked up front);
    ``auto`` drops them where the dataset labels its corrections and is decoded into memory."""
    mode = cfg.get("failure_actions", "keep")
    if mode not in ("keep", "drop", "auto"):
        raise ValueError(f"failure_actions={mode!r}: use keep, drop or auto")
    if mode == "auto":
        return cfg["data"] == "memory" and "correction" in _features(cfg["dataset"])
    if mode == "drop" and cfg["data"] != "memory":
        raise ValueError("failure_actions=drop needs data=memory (it reads each episode's "
                         "correction labels from the decoded dataset)")  # fmt: skip
    return mode == "drop"


def _features(root: str) -> dict[str, dict]:
    info = Path(root) / "meta" / "info.json"
    if not info.is_file():
        open_dataset(root)  # raises the clear error
    return json.loads(info.read_text())["features"]


def _fast_tokenizer(
    cfg: Mapping, dataset, normalizer: Normalizer, config: VLAConfig
) -> FastTokenizer:
    if cfg["fast_tokenizer"]:
        tok = FastTokenizer.load(cfg["fast_tokenizer"])
    else:
        chunks = action_chunks(dataset, config.chunk_length, cfg["fast_fit_chunks"], cfg["seed"])
        normed = normalizer.normalize(ACTION, torch.from_numpy(chunks)).numpy()
        tok = FastTokenizer(vocab_size=config.fast_vocab_size).fit(normed)
    if (tok.horizon, tok.action_dim) != (config.chunk_length, config.action_dim):
        raise ValueError(
            f"fast_tokenizer was fitted on ({tok.horizon}, {tok.action_dim}) chunks, the policy "
            f"predicts ({config.chunk_length}, {config.action_dim}): refit it with rtvla fit-fast"
        )
    if tok.vocab_size > config.fast_vocab_size:
        raise ValueError(
            f"fast_tokenizer has {tok.vocab_size} ids, more than policy.fast_vocab_size="
            f"{config.fast_vocab_size}: raise policy.fast_vocab_size"
        )
    return tok
