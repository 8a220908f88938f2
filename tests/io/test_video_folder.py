"""vidsel.data.VideoFolder on real encoded videos: layout, both modes, seeded sampling under DataLoader
workers and DistributedSampler, and unreadable files reported once and skipped."""

import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tests.train.moving_textures import CLASSES, make_folder
from vidsel.data import VideoFolder, collate_clips, sample_seed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_folder(root, per_class=3, num_frames=8, size=32)
    return str(root)


def corrupt_copy(src: str, dst) -> str:
    """A copy of the folder with one garbage .mp4 in the first class (sorted)."""
    import shutil

    shutil.copytree(src, dst)
    bad = os.path.join(dst, sorted(CLASSES)[0], "clip_001_broken.mp4")
    with open(bad, "wb") as handle:
        handle.write(os.urandom(2048))
    return bad


def test_imagefolder_layout_and_rgb_clips(folder):
    data = VideoFolder(folder, frames=4, size=32)
    assert data.classes == sorted(CLASSES)
    assert len(data) == 12 and data.targets == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert all(os.path.basename(os.path.dirname(p)) == data.classes[y] for p, y in data.samples)
    clip, label = data[4]
    assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32 and label == 1
    assert 0.0 <= clip.min() and clip.max() <= 1.0 and clip.std() > 0.1


def test_compressed_mode_and_collate(folder):
    data = VideoFolder(folder, frames=2, size=32, mode="compressed")
    clips, labels = collate_clips([data[0], data[5]])
    assert clips["iframes"].shape == (2, 2, 3, 32, 32) and clips["residual"].dtype == torch.int16
    assert clips["motion"].shape == (2, 2, 2, 2, 2) and clips["block_size"] == 16
    assert labels.tolist() == [0, 1]


def test_transform_gets_the_decoded_clip(folder):
    data = VideoFolder(folder, frames=3, size=16, transform=lambda clip: (clip.shape, clip.dtype, torch.rand(())))
    (shape, dtype, draw), _ = data[0]
    assert shape == (3, 3, 16, 16) and dtype == torch.uint8
    assert data[0][0][2] == draw  # the transform's random draws are seeded per item too


def test_sampling_is_a_function_of_seed_epoch_index(folder):
    data = VideoFolder(folder, frames=4, size=32, augment=True, seed=3)
    first = [data[i][0] for i in range(len(data))]
    serial = torch.stack(first)
    parallel = torch.cat([c for c, _ in DataLoader(data, batch_size=5, num_workers=2, collate_fn=collate_clips)])
    assert torch.equal(serial, parallel)  # workers (and which worker loads what) change nothing
    assert torch.equal(VideoFolder(folder, frames=4, size=32, augment=True, seed=3)[7][0], first[7])
    data.set_epoch(1)
    assert not torch.equal(torch.stack([data[i][0] for i in range(len(data))]), serial)
    assert sample_seed(3, 1, 7) != sample_seed(3, 0, 7) != sample_seed(4, 0, 7)
    with pytest.raises(ValueError, match="epoch"):
        data.set_epoch(-1)


def test_distributed_sampler_shards_cover_the_folder(folder):
    data = VideoFolder(folder, frames=2, size=32)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(1)
        for _, labels in DataLoader(data, batch_size=3, sampler=sampler, num_workers=1, collate_fn=collate_clips):
            seen += labels.tolist()
    assert sorted(seen) == sorted(data.targets)


def test_split_is_seeded_and_per_class(folder):
    data = VideoFolder(folder, frames=2, size=32)
    rest, held_out = data.split(0.34)
    assert len(held_out) == 4 and sorted(held_out.targets) == [0, 1, 2, 3]
    assert not set(rest.samples) & set(held_out.samples)
    assert held_out.samples == data.split(0.34)[1].samples


def test_corrupt_file_warns_once_and_is_skipped(folder, tmp_path):
    root = tmp_path / "with_bad"
    bad = corrupt_copy(folder, root)
    data = VideoFolder(root, frames=2, size=32)
    index = [p for p, _ in data.samples].index(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            clips = [data[i][0] for i in range(len(data))]
    messages = [str(w.message) for w in caught if bad in str(w.message)]
    assert len(messages) == 1 and "unreadable" in messages[0]
    assert torch.equal(clips[index], data[index + 1][0])  # served by the next readable video
    assert data.unreadable() == [bad]


WORKER_SCRIPT = """
import sys
from torch.utils.data import DataLoader
from vidsel.data import VideoFolder, collate_clips
data = VideoFolder(sys.argv[1], frames=2, size=32)
loader = DataLoader(data, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate_clips)
sizes = []
for epoch in range(3):
    data.set_epoch(epoch)
    sizes += [len(labels) for _, labels in loader]
print(sum(sizes), len(data), data.unreadable())
"""


def test_corrupt_file_warns_once_across_workers_and_epochs(folder, tmp_path):
    # A fresh interpreter: pytest's warning capture would swallow what forked workers print.
    import subprocess
    import sys

    bad = corrupt_copy(folder, tmp_path / "with_bad")
    result = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(tmp_path / "with_bad")], capture_output=True,
                            text=True, timeout=300, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr
    total, size, unreadable = result.stdout.strip().split(" ", 2)
    assert int(total) == 3 * int(size)  # full batches: nothing dropped, nothing crashed
    assert result.stderr.count(bad) == 1 and "RuntimeWarning" in result.stderr
    assert unreadable == repr([bad])


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        VideoFolder(".", mode="flow")
    with pytest.raises(ValueError, match="frames"):
        VideoFolder(".", frames=0)
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        VideoFolder("/nonexistent/videos")
