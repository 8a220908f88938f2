"""Small models of each supported library, built from the library's own classes (random weights)."""

import torch


def timm_vit(depth: int = 3, **kwargs):
    from timm.models.vision_transformer import VisionTransformer

    config = dict(img_size=64, patch_size=16, embed_dim=64, depth=depth, num_heads=4, num_classes=0, qkv_bias=True)
    return VisionTransformer(**{**config, **kwargs}).eval()


def hf_vit(depth: int = 3):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=64, num_hidden_layers=depth, num_attention_heads=4, intermediate_size=128,
                       image_size=64, patch_size=16)
    return ViTModel(config).eval()


def hf_videomae(depth: int = 3):
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(hidden_size=64, num_hidden_layers=depth, num_attention_heads=4, intermediate_size=128,
                            image_size=64, patch_size=16, num_frames=4, tubelet_size=2)
    return VideoMAEModel(config).eval()


def hf_timesformer(depth: int = 3, frames: int = 4, **kwargs):
    from transformers import TimesformerConfig, TimesformerModel

    config = TimesformerConfig(hidden_size=64, num_hidden_layers=depth, num_attention_heads=4, intermediate_size=256,
                               image_size=64, patch_size=16, num_frames=frames, **kwargs)
    return TimesformerModel(config).eval()


def image_batch(batch: int = 2):
    return torch.randn(batch, 3, 64, 64)


def video_batch(batch: int = 2, frames: int = 4):
    """(B, T, 3, H, W): the Hugging Face video layout."""
    return torch.randn(batch, frames, 3, 64, 64)


def last_hidden(output):
    return output if isinstance(output, torch.Tensor) else output.last_hidden_state
