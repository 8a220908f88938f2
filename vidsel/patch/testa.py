"""TESTA (Ren et al., 2023) on a Hugging Face `TimesformerModel` you already have (or a model
containing one, e.g. `TimesformerForVideoClassification`), divided space-time attention.

Every `TimesformerLayer` becomes the TESTA block of `vidsel.models.testa` (§3.2):
  temporal attention -> Temporal Aggregation Module: T -> T - min(R_T, ⌊(T-1)/2⌋) whole frames
      merged, frame metric = attention keys averaged over the frame's patches (§3.2.1; frame 0 is
      protected, as in `vidsel.models.testa`);
  spatial attention  -> Spatial Aggregation Module: L -> L - min(R_S, ⌊L/2⌋) patches merged per
      frame, attention keys as the metric (§3.2.2);
  MLP over CLS + T·L tokens.
Merges are size-weighted averages (`vidsel.ops.bipartite_match` + `vidsel.ops.merge`), partition
"alternate" (geometry) or "importance" (eq. 1); ``prop_attn`` adds log(size) to the logits.

Token layout: as the unpatched model, CLS then the patch tokens patch-major (index 1 + l·T + t),
now with T' frames and L' patch slots per frame: ``last_hidden_state`` is (B, 1 + L'·T', D), and
``handle.state.frames`` / ``.patches`` give T', L' of the last forward. The patched layers hold the
original submodules under the original names (same ``state_dict()`` keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vidsel import ops
from vidsel.nn import frames_with_cls
from vidsel.patch._common import (
    PatchHandle,
    adopt_children,
    attend,
    check_r,
    dropout_p,
    find_backbone,
    refuse_repatch,
    replace_items,
    unsupported,
)

SUPPORTED = ("transformers TimesformerModel (attention_type='divided_space_time')",)
PARTITIONS = ("alternate", "importance")


@dataclass
class TestaState:
    """Record of the last forward: token grid and sizes after the last block.

    frames, patches   T', L' of the output tokens
    frame_size        (B, T') original frames each output frame stands for
    patch_size        (B, T', L') original patches each output patch token stands for
    tokens_per_block  (T_i, L_i) after every block (eager mode only)
    source            (B, T', L', T·L) bool with trace_source=True: which input patches (frame-major
                      index t·L + l) every output patch token covers
    frame_source      (B, T', T) bool with trace_source=True: which input frames every output frame covers
    """

    __test__ = False

    frames: int = 0
    patches: int = 0
    frame_size: Tensor | None = None
    patch_size: Tensor | None = None
    tokens_per_block: list[tuple[int, int]] = field(default_factory=list)
    trace_source: bool = False
    source: Tensor | None = None
    frame_source: Tensor | None = None

    def start(self, hidden: Tensor, frames: int) -> None:
        batch, n, _ = hidden.shape
        if (n - 1) % frames:
            raise ValueError(f"TESTA-patched TimeSformer: {n - 1} patch tokens do not split into {frames} frames")
        self.frames, self.patches = frames, (n - 1) // frames
        self.frame_size = torch.ones(batch, frames, dtype=hidden.dtype, device=hidden.device)
        self.patch_size = torch.ones(batch, frames, self.patches, dtype=hidden.dtype, device=hidden.device)
        self.tokens_per_block = []
        if self.trace_source:
            n = frames * self.patches
            eye = torch.eye(n, dtype=torch.bool, device=hidden.device).reshape(frames, self.patches, n)
            self.source = eye.expand(batch, frames, self.patches, n)
            self.frame_source = torch.eye(frames, dtype=torch.bool, device=hidden.device).expand(batch, frames, frames)

    def token_size(self) -> Tensor:
        """(B, T, L) original tokens each current token stands for."""
        return self.frame_size[:, :, None] * self.patch_size


def _attention(module: nn.Module, x: Tensor, size: Tensor | None, need_importance: bool, need_keys: bool):
    """A `TimeSformerAttention` (fused qkv + output dense) with the size bias; also keys / importance.

    The softmax is explicit, as in transformers' own TimeSformer attention (so an unmerged block
    computes exactly what the unpatched one does, and speed comparisons isolate the merging).

    x (B', N, D) -> out (B', N, D), keys averaged over heads (B', N, C) or None, importance (B', N) or None.
    """
    self_attn = module.attention
    batch, n, dim = x.shape
    qkv = self_attn.qkv(x).reshape(batch, n, 3, self_attn.num_heads, dim // self_attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out, importance = attend(q, k, v, size, dropout_p(self_attn, self_attn.attn_drop.p), need_importance,
                             explicit=True)
    keys = qkv[:, :, 1].mean(dim=2) if need_keys else None
    return module.output(out), keys, importance


def _removed(r: int, n: int, protected: int) -> int:
    return max(0, min(r, (n - protected) // 2))


class _TestaLayer(nn.Module):
    """A `TimesformerLayer` run as a TESTA block (TAM after temporal, SAM after spatial attention)."""

    def __init__(self, original: nn.Module, index: int, r_frames: int, r_patches: int, partition: str,
                 prop_attn: bool, state: TestaState, impl: str):
        super().__init__()
        adopt_children(self, original)
        self.config = original.config
        self.index, self.r_frames, self.r_patches = index, r_frames, r_patches
        self.partition, self.prop_attn, self.state, self.impl = partition, prop_attn, state, impl

    def forward(self, hidden_states: Tensor, output_attentions: bool = False) -> tuple[Tensor]:
        if output_attentions:
            raise ValueError("a TESTA-patched TimeSformer cannot return attentions (their shapes change per block)")
        state = self.state
        if self.index == 0:
            state.start(hidden_states, self.config.num_frames)
        batch, _, dim = hidden_states.shape
        cls = hidden_states[:, :1]
        x = hidden_states[:, 1:].reshape(batch, state.patches, state.frames, dim).transpose(1, 2)  # (B, T, L, D)
        importance = self.partition == "importance"

        merge_frames = _removed(self.r_frames, x.shape[1], 1) > 0
        size = state.token_size() if self.prop_attn else None
        x, frame_keys, frame_importance = self._temporal(x, size, importance and merge_frames, merge_frames)
        if merge_frames:
            x = self._merge_frames(x, frame_keys, frame_importance)

        merge_patches = _removed(self.r_patches, x.shape[2], 0) > 0
        size = state.token_size() if self.prop_attn else None
        cls, x, patch_keys, patch_importance = self._spatial(cls, x, size, importance and merge_patches, merge_patches)
        if merge_patches:
            x = self._merge_patches(x, patch_keys, patch_importance)

        state.frames, state.patches = x.shape[1], x.shape[2]
        tokens = torch.cat([cls, x.transpose(1, 2).reshape(batch, -1, dim)], dim=1)  # back to patch-major
        tokens = tokens + self.drop_path(self.output(self.intermediate(self.layernorm_after(tokens))))
        if not torch.compiler.is_compiling():
            state.tokens_per_block.append((state.frames, state.patches))
        return (tokens,)

    def _temporal(self, x, size, need_importance, need_keys):
        """Attention across the T frames of every patch position; x (B, T, L, D), size (B, T, L)."""
        batch, frames, patches, dim = x.shape
        per_position = x.transpose(1, 2).reshape(batch * patches, frames, dim)
        position_size = None if size is None else size.transpose(1, 2).reshape(batch * patches, frames)
        out, keys, importance = _attention(
            self.temporal_attention, self.temporal_layernorm(per_position), position_size, need_importance, need_keys
        )
        out = self.temporal_dense(self.drop_path(out)).reshape(batch, patches, frames, dim).transpose(1, 2)
        frame_keys = None if keys is None else keys.reshape(batch, patches, frames, -1).mean(dim=1)
        if importance is not None:
            importance = importance.reshape(batch, patches, frames).mean(dim=1)
        return x + out, frame_keys, importance

    def _spatial(self, cls, x, size, need_importance, need_keys):
        """Attention within every frame, a copy of CLS first; the copies' outputs average into one CLS."""
        batch, frames, patches, dim = x.shape
        per_frame, token_size = frames_with_cls(cls, x, size)
        out, keys, importance = _attention(
            self.attention, self.layernorm_before(per_frame), token_size, need_importance, need_keys
        )
        out = self.drop_path(out)
        cls = cls + out[:, 0].reshape(batch, frames, dim).mean(dim=1, keepdim=True)
        x = x + out[:, 1:].reshape(batch, frames, patches, dim)
        if importance is not None:
            importance = importance[:, 1:]
        return cls, x, (None if keys is None else keys[:, 1:]), importance

    def _match(self, metric, r, protected, importance):
        return ops.bipartite_match(
            metric, _removed(r, metric.shape[1], protected), partition=self.partition,
            importance=importance if self.partition == "importance" else None, protected=protected, impl=self.impl,
        )

    def _merge_frames(self, x, frame_keys, frame_importance):
        """TAM: (B, T, L, D) -> (B, T', L, D); a merged frame's patch sizes average frame-size weighted."""
        state = self.state
        matching = self._match(frame_keys, self.r_frames, 1, frame_importance)
        merged, frame_size = ops.merge(x, matching, state.frame_size, impl=self.impl)
        patch_size, _ = ops.merge(state.patch_size.unsqueeze(-1), matching, state.frame_size, impl=self.impl)
        state.frame_size, state.patch_size = frame_size, patch_size.squeeze(-1)
        if state.trace_source:
            batch, frames, patches, n = state.source.shape
            rows = ops.merge_source(matching, state.source.reshape(batch, frames, patches * n), impl=self.impl)
            state.source = rows.reshape(batch, -1, patches, n)
            state.frame_source = ops.merge_source(matching, state.frame_source, impl=self.impl)
        return merged

    def _merge_patches(self, x, patch_keys, patch_importance):
        """SAM: (B, T, L, D) -> (B, T, L', D), patches of each frame merged independently."""
        state = self.state
        batch, frames, patches, dim = x.shape
        matching = self._match(patch_keys, self.r_patches, 0, patch_importance)
        merged, patch_size = ops.merge(
            x.reshape(batch * frames, patches, dim), matching, state.patch_size.reshape(batch * frames, patches),
            impl=self.impl,
        )
        kept = merged.shape[1]
        state.patch_size = patch_size.reshape(batch, frames, kept)
        if state.trace_source:
            n = state.source.shape[-1]
            rows = ops.merge_source(matching, state.source.reshape(batch * frames, patches, n), impl=self.impl)
            state.source = rows.reshape(batch, frames, kept, n)
        return merged.reshape(batch, frames, kept, dim)

    def extra_repr(self) -> str:
        return f"block={self.index}, r_frames={self.r_frames}, r_patches={self.r_patches}, partition={self.partition!r}"


def testa(model: nn.Module, r_frames, r_patches, *, partition: str = "alternate", prop_attn: bool = False,
          trace_source: bool = False, impl: str = "auto") -> PatchHandle:
    """Patches TESTA's temporal + spatial aggregation into a Hugging Face TimeSformer, in place.

    Args:
        model: a transformers `TimesformerModel` (divided space-time) or a model containing one.
        r_frames: R_T, frames merged per block (int, or one per block).
        r_patches: R_S, patches merged per frame per block (int, or one per block).
        partition: "alternate" (geometry-based) or "importance" (TESTA eq. 1).
        prop_attn: proportional attention (+ log size on the logits); off in TESTA.
        trace_source: also track which input patches / frames every output token covers
            (``handle.state.source`` / ``.frame_source``, what `vidsel.viz.merges` draws).
        impl: backend of the vidsel ops.

    Returns:
        PatchHandle: ``.patched`` layers, ``.state`` (`TestaState` of the last forward), ``.remove()``.
    """
    try:
        from transformers import TimesformerModel
    except ImportError:
        TimesformerModel = None
    backbone = find_backbone(model, [TimesformerModel]) if TimesformerModel is not None else None
    if backbone is None:
        raise unsupported("testa", model, SUPPORTED)
    if backbone.config.attention_type != "divided_space_time":
        raise TypeError(
            f"vidsel.patch.testa: {type(backbone).__name__} has attention_type={backbone.config.attention_type!r}; "
            f"supported: {SUPPORTED[0]}"
        )
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
    refuse_repatch(backbone)
    layers = backbone.encoder.layer
    frames_per_block = check_r("r_frames", r_frames, len(layers))
    patches_per_block = check_r("r_patches", r_patches, len(layers))
    state = TestaState(trace_source=trace_source)

    def make(index, layer):
        return _TestaLayer(layer, index, frames_per_block[index], patches_per_block[index], partition, prop_attn,
                           state, impl)

    undo = replace_items(layers, make)
    schedule = _schedule(backbone.config, frames_per_block, patches_per_block)
    return PatchHandle(backbone, "testa", state, undo, patched=len(undo), schedule=schedule)


testa.__test__ = False  # not a pytest test despite its name


def _schedule(config, r_frames: list[int], r_patches: list[int]) -> list[tuple[int, int]]:
    """(T_i, L_i) after every block by the §3.2 formula (`vidsel.models.testa.testa_token_schedule`,
    here with one R_T, R_S per block), for the model's configured input."""
    frames, patches = config.num_frames, (config.image_size // config.patch_size) ** 2
    schedule = []
    for r_t, r_s in zip(r_frames, r_patches):
        frames -= _removed(r_t, frames, 1)
        patches -= _removed(r_s, patches, 0)
        schedule.append((frames, patches))
    return schedule


# vidsel TESTA / TimeSformer encoder names -> transformers TimesformerModel names (same tensors).
_HF_NAMES = (
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^time_embed$", "embeddings.time_embeddings"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.temporal_norm1\.", r"encoder.layer.\1.temporal_layernorm."),
    (r"^blocks\.(\d+)\.temporal_attn\.qkv\.", r"encoder.layer.\1.temporal_attention.attention.qkv."),
    (r"^blocks\.(\d+)\.temporal_attn\.proj\.", r"encoder.layer.\1.temporal_attention.output.dense."),
    (r"^blocks\.(\d+)\.temporal_fc\.", r"encoder.layer.\1.temporal_dense."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layer.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layer.\1.attention.attention.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layer.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"encoder.layer.\1.output.dense."),
    (r"^norm\.", "layernorm."),
)


def timesformer_state_dict(testa_state_dict: dict) -> dict:
    """State dict of a `vidsel.models.testa.TestaEncoder` renamed for transformers' `TimesformerModel`
    (``hf_model.load_state_dict(timesformer_state_dict(encoder.state_dict()))``). Unknown keys raise."""
    renamed = {}
    for key, value in testa_state_dict.items():
        for pattern, replacement in _HF_NAMES:
            if re.match(pattern, key):
                renamed[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise ValueError(f"timesformer_state_dict: no TimesformerModel name for vidsel key {key!r}")
    return renamed
