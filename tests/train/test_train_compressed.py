"""MM-ViT fine-tuning on compressed clips: VideoFolder(mode="compressed") batches feed the classifier
through a DataLoader worker, and `vidsel train --model mmvit_...` runs on a folder of MPEG-4 videos with
audio (I-frames, motion vectors, residuals and audio, the four modalities of MM-ViT §3.2); a file
without audio is skipped with one warning there, not a crash mid-epoch."""

import json
import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from tests.video_factory import make_video, tone
from vidsel.data import VideoFolder, collate_clips
from vidsel.train import main
from vidsel.train.models import CompressedInputs, build_classifier, input_mode

TINY_MMVIT = dict(num_frames=2, img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2)
MOTIONS = {"left": (-2, 0), "up": (0, -2)}  # the class is the direction the texture moves


def make_folder(root, per_class: int) -> None:
    for label, (name, motion) in enumerate(sorted(MOTIONS.items())):
        os.makedirs(root / name)
        for i in range(per_class):
            # Clip lengths differ, so their audio segments do too (collate cuts them to the shortest).
            make_video(root / name / f"clip_{i}.mp4", size=(32, 32), num_frames=12 + 2 * i, fps=12, motion=motion,
                       gop=6, audio=tone(300.0 + 200 * label + 20 * i), seed=10 * label + i)


def test_compressed_batches_feed_the_mmvit_classifier(tmp_path):
    make_folder(tmp_path, per_class=2)
    data = VideoFolder(tmp_path, frames=2, size=32, mode="compressed", reader_kwargs=dict(audio=True))
    clips, labels = next(iter(DataLoader(data, batch_size=4, num_workers=1, collate_fn=collate_clips)))
    assert clips["audio"].shape[:2] == (4, 2) and clips["sample_rate"] == 16000
    torch.manual_seed(0)
    model = build_classifier("mmvit_iii_merged", 2, TINY_MMVIT)
    assert isinstance(model, CompressedInputs) and input_mode(model) == "compressed" and model.uses_audio
    logits = model(clips)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    # The same as the model's own per-clip path (vidsel.io clips -> CompressedPatchEmbed.clip_inputs),
    # up to the audio cut of the longer clips: compare the two shortest clips, which are not cut.
    shortest = [0, 2]
    own = model.classifier.forward_clips([data[i][0] for i in shortest])
    batch = {k: v[shortest] if torch.is_tensor(v) else v for k, v in clips.items()}
    torch.testing.assert_close(model(batch), own)


def test_vidsel_train_runs_mmvit_on_a_compressed_folder(tmp_path):
    data, out = tmp_path / "videos", tmp_path / "run"
    os.makedirs(data)
    make_folder(data, per_class=4)
    silent = make_video(data / "left" / "zz_no_audio.mp4", size=(32, 32), num_frames=12, fps=12, motion=(-2, 0),
                        gop=6, audio=None).path  # skipped with one warning: the model reads audio
    args = ["--model", "mmvit_iii_merged", "--data", str(data), "--out", str(out), "--epochs", "2",
            "--batch-size", "3", "--lr", "1e-3", "--val-fraction", "0.25", "--workers", "0", "--no-progress",
            "--log-every", "1"] + [a for k, v in TINY_MMVIT.items() for a in ("--model-arg", f"{k}={v}")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    assert len([w for w in caught if silent in str(w.message) and "no audio track" in str(w.message)]) == 1
    with open(out / "log.jsonl") as handle:
        log = [json.loads(line) for line in handle]
    assert log[0]["train_clips"] + log[0]["held_out_clips"] == 9
    assert [e["path"] for e in log if e["event"] == "skipped"] == [silent]
    trains = [e for e in log if e["event"] == "train"]
    assert [e["step"] for e in trains] == [1, 2, 3, 4] and all(e["loss"] > 0 for e in trains)
    assert [(e["epoch"], e["clips"]) for e in log if e["event"] == "eval"] == [(0, 2), (1, 2)]
    final = torch.load(out / "model.pt")
    torch.manual_seed(0)
    initial = build_classifier("mmvit_iii_merged", 2, TINY_MMVIT)
    reloaded = build_classifier("mmvit_iii_merged", 2, TINY_MMVIT)
    reloaded.load_state_dict(final["model"])
    moved = [k for k, v in initial.state_dict().items() if not torch.equal(v, reloaded.state_dict()[k])]
    assert len(moved) > len(final["model"]) // 2


def test_require_audio_needs_compressed_clips_with_audio(tmp_path):
    make_folder(tmp_path, per_class=1)
    for kwargs in (dict(mode="rgb"), dict(mode="compressed"), dict(mode="compressed", reader_kwargs=dict(audio=False))):
        with pytest.raises(ValueError, match="require_audio"):
            VideoFolder(tmp_path, frames=2, size=32, require_audio=True, **kwargs)
