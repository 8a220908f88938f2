"""Patch models you already have: ``vidsel.patch.tome`` (timm / Hugging Face ViT, VideoMAE),
``vidsel.patch.testa`` (Hugging Face TimeSformer), ``vidsel.patch.stts`` (torchvision MViT, Video Swin).

Each call changes the model in place and returns a `PatchHandle` (``.patched`` blocks changed,
``.state`` what the last forward did, ``.remove()`` restores the original modules).
"""

from vidsel.patch._common import PatchHandle
from vidsel.patch.stts import STTSState, stts
from vidsel.patch.testa import TestaState, testa
from vidsel.patch.tome import ToMeState, tome, tome_token_schedule

__all__ = ["PatchHandle", "STTSState", "TestaState", "stts", "ToMeState", "testa", "tome", "tome_token_schedule"]
