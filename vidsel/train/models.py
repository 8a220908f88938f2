"""Classifiers for fine-tuning: any vidsel.create_model name with a head of `num_classes` outputs.

STTS models carry their own head (config field num_classes); the TESTA / joint encoders return tokens
(B, 1 + N, D) and get a linear head on the class token. Input clips are (B, 3, T, H, W) floats in [0, 1],
normalised here with the ImageNet statistics the ViT backbones are usually initialised for; MM-ViT models
take the collated compressed clips (I-frames, motion, residuals, audio) of VideoFolder(mode="compressed").
"""

from __future__ import annotations

import ast
from dataclasses import fields

import torch
from torch import Tensor, nn

import vidsel
from vidsel.models.stts import sigma_at

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class TokenClassifier(nn.Module):
    """encoder (B, 3, T, H, W) -> tokens (B, 1 + N, D); head on token 0 -> logits (B, num_classes)."""

    def __init__(self, encoder: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, clip: Tensor) -> Tensor:
        return self.head(self.encoder(clip)[:, 0])


class CompressedInputs(nn.Module):
    """A collated batch of compressed clips (`vidsel.data.collate_clips` of VideoFolder(mode="compressed"))
    -> the MM-ViT classifier's (iframe, motion, residual, audio) inputs, scaled as
    `vidsel.nn.CompressedPatchEmbed.clip_inputs` scales one clip: I-frames uint8 -> [0, 1], residuals
    [-255, 255] -> [-1, 1], motion in pixels, audio as waveform segments (log-mel features in the model).

    batch: dict with "iframes" (B, T, 3, H, W) uint8, "motion" (B, T, 2, H/g, W/g), "residual"
    (B, T, 3, H, W) int16, and "audio" (B, T, S) + "sample_rate" when the model uses audio.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.uses_audio = "A" in classifier.config.modalities

    def forward(self, batch: dict) -> Tensor:
        if not isinstance(batch, dict) or "iframes" not in batch:
            raise TypeError("batch must be a collate_clips dict of compressed clips (VideoFolder mode='compressed')")
        dtype = self.classifier.cls_token.dtype
        audio = dict(audio_waveform=None, sample_rate=None)
        if self.uses_audio:
            if "audio" not in batch:
                raise ValueError(f"modalities={self.classifier.config.modalities!r} uses audio but some clips of the "
                                 "batch have no audio track; train with --model-arg modalities=IMR")
            audio = dict(audio_waveform=batch["audio"], sample_rate=int(batch["sample_rate"]))
        return self.classifier(batch["iframes"].to(dtype) / 255.0, batch["motion"].to(dtype),
                               batch["residual"].to(dtype) / 255.0, None, **audio)


def input_mode(model: nn.Module) -> str:
    """The VideoFolder mode a `build_classifier` model reads: "compressed" (MM-ViT) or "rgb"."""
    return "compressed" if isinstance(model, CompressedInputs) else "rgb"


def uses_audio(model: nn.Module) -> bool:
    """Whether the (wrapped) model reads the clips' audio (MM-ViT with "A" in modalities)."""
    return isinstance(model, CompressedInputs) and model.uses_audio


class Normalized(nn.Module):
    """(x - mean) / std per RGB channel of a (B, 3, T, H, W) clip in [0, 1], then the classifier."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, clip: Tensor) -> Tensor:
        return self.classifier((clip - self.mean) / self.std)


def parse_model_args(items: list[str] | None) -> dict:
    """["depth=2", "prop_attn=True", "partition=importance"] -> {"depth": 2, "prop_attn": True, ...}.

    Values are Python literals when they parse as one, strings otherwise.
    """
    overrides = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg expects KEY=VALUE with KEY a config field name, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def config_fields(name: str, overrides: dict) -> set[str]:
    """Field names of the model's config, from a copy built on the meta device (no memory, no init cost;
    the generators are restored, so the real model's initial weights do not depend on this probe)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        probe = vidsel.create_model(name, **overrides)
    return {f.name for f in fields(probe.config)}


def build_classifier(name: str, num_classes: int, overrides: dict | None = None) -> nn.Module:
    """`vidsel.create_model(name, **overrides)` with a `num_classes` head, inputs normalised (RGB clips,
    `Normalized`) or unpacked from a compressed-clip batch (MM-ViT, `CompressedInputs`).

    Raises ValueError for unknown names or config fields (the registry's message lists the known ones).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    overrides = dict(overrides or {})
    known = config_fields(name, overrides)
    if "num_classes" in known:
        classifier = vidsel.create_model(name, **{**overrides, "num_classes": num_classes})
    else:
        encoder = vidsel.create_model(name, **overrides)
        classifier = TokenClassifier(encoder, encoder.config.embed_dim, num_classes)
    # MM-ViT configs (the only ones with `modalities`) read compressed clips.
    return CompressedInputs(classifier) if "modalities" in known else Normalized(classifier)


def clip_geometry(model: nn.Module) -> tuple[int, int]:
    """(frames T, size) the model's config expects (num_frames, img_size)."""
    config = model.classifier.config
    return int(config.num_frames), int(config.img_size)


def has_sigma(model: nn.Module) -> bool:
    """Whether the model has perturbed top-k selectors whose σ the schedule drives (STTS)."""
    return hasattr(model.classifier, "set_sigma")


def apply_sigma(model: nn.Module, schedule: str, sigma0: float, step: int, total: int) -> float | None:
    """Sets the selectors' σ for `step` of `total` (linear: `sigma_at`, STTS §3.2; constant: sigma0)."""
    if not has_sigma(model):
        return None
    sigma = sigma_at(step, total, sigma0) if schedule == "linear" else float(sigma0)
    model.classifier.set_sigma(sigma)
    return sigma


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, scorer_lr_mult: float) -> list[dict]:
    """AdamW groups: no decay on biases / norms / embeddings (1-D or token tables), and STTS scorers at
    scorer_lr_mult × lr (the paper trains them faster than the backbone)."""
    scorer_ids = set()
    if has_sigma(model):
        scorer_ids = {id(p) for p in model.classifier.selector_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "time_embed"))
        groups.setdefault((id(param) in scorer_ids, no_decay), []).append(param)
    return [
        dict(params=params, lr=lr * (scorer_lr_mult if scorer else 1.0), weight_decay=0.0 if no_decay else weight_decay)
        for (scorer, no_decay), params in sorted(groups.items())
    ]
