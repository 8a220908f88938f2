"""`VideoFolder`: a labelled dataset over ``root/<class>/<video>`` (torchvision ``ImageFolder`` layout).

Every item is decoded with vidsel.io when it is requested: ``mode="rgb"`` reads T uniformly sampled RGB
frames (`vidsel.io.read_frames`, for the TESTA / STTS / MIST-style encoders), ``mode="compressed"`` reads
T compressed-domain segments (`vidsel.io.read_compressed`, MM-ViT's I-frames, motion and residuals).

Two pieces of state are shared-memory tensors so that DataLoader worker processes (``num_workers > 0``)
and the main process see the same values: the epoch (`set_epoch`, as for ``DistributedSampler``) and a
per-file "unreadable" flag. A file that fails to decode is flagged and reported by one warning naming it,
whichever process met it first; that item and every later request for it are served by the next readable
item, so an epoch never stops on a bad file and every rank's batches keep their size.

Randomness (``augment=True``: temporal jitter and horizontal flip, plus whatever ``transform`` draws from
torch's default generator) comes from a generator seeded by ``sample_seed(seed, epoch, index)``, so an
item is the same whatever the worker count, the worker that loads it, or the order of loading.

Forking: a PyAV decoder caught in a reference cycle keeps its FFmpeg frame threads until the garbage
collector frees it, and a process forked meanwhile (a DataLoader worker) can crash in FFmpeg's locks; so
importing this module registers a garbage collection before every os.fork.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vidsel.io import CompressedClip, VideoReadError, read_compressed, read_frames

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".3gp")
MODES = ("rgb", "compressed")
_UNREADABLE = 1

os.register_at_fork(before=gc.collect)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends on (seed, epoch, index) only (NumPy SeedSequence hashing)."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    state = np.random.SeedSequence((int(seed), int(epoch), int(index))).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def find_classes(root: str) -> list[str]:
    """Sorted names of the sub-folders of `root` (hidden ones excepted): the class names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(2, f"{root}: no such dataset folder", root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"root {root!r} has no class sub-folders (expected root/<class>/<video>)")
    return classes


def list_videos(root: str, classes: Sequence[str], extensions: Sequence[str]) -> list[tuple[str, int]]:
    """(path, class index) of every file under root/<class>/ (recursively) ending in one of `extensions`."""
    suffixes = tuple(e.lower() for e in extensions)
    samples = []
    for label, name in enumerate(classes):
        for folder, subfolders, files in os.walk(os.path.join(root, name), followlinks=True):
            subfolders.sort()
            samples += [(os.path.join(folder, f), label) for f in sorted(files) if f.lower().endswith(suffixes)]
    return samples


class VideoFolder(Dataset):
    """Clips of the videos under ``root/<class>/``, labelled by sub-folder (sorted names -> 0, 1, ...).

    Args:
        root: dataset folder.
        frames: T, frames (rgb) or segments (compressed) per clip.
        size: None (native), an int (square) or (height, width) of the decoded frames.
        mode: "rgb" -> (3, T, H, W) float32 in [0, 1] (without `transform`); "compressed" -> CompressedClip.
        transform: called on the clip as read — (T, 3, H, W) uint8 for "rgb" (the layout torchvision v2
            transforms take for video), a CompressedClip for "compressed" — its output is the sample.
        seed: base of the per-item seeds (see `sample_seed`).
        augment: temporal jitter (rgb: one of two neighbouring frames per slice) and a random horizontal
            flip (compressed: motion x negated too), both drawn from the item's generator.
        extensions: file name endings that count as videos.
        samples, classes: an explicit (path, label) list and class names instead of scanning root (see `split`).
        reader_kwargs: extra keyword arguments of the vidsel.io reader (e.g. audio=True for compressed).
        require_audio: compressed mode with audio: a file without an audio track counts as unreadable
            (reported once and skipped), for models that read audio.

    Items: (sample, label int). Attributes: classes, class_to_idx, samples, targets.
    """

    def __init__(
        self,
        root,
        frames: int = 8,
        size=224,
        mode: str = "rgb",
        transform: Callable | None = None,
        *,
        seed: int = 0,
        augment: bool = False,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        samples: Sequence[tuple[str, int]] | None = None,
        classes: Sequence[str] | None = None,
        reader_kwargs: dict | None = None,
        require_audio: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f'mode must be "rgb" or "compressed", got {mode!r}')
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        sample_seed(seed, 0, 0)  # validates seed
        self.root = os.fspath(root)
        self.frames, self.size, self.mode, self.transform = frames, size, mode, transform
        self.seed, self.augment = int(seed), bool(augment)
        self.extensions = tuple(extensions)
        self.reader_kwargs = dict(reader_kwargs or {})
        if require_audio and (mode != "compressed" or not self.reader_kwargs.get("audio", False)):
            raise ValueError('require_audio=True needs mode="compressed" and reader_kwargs={"audio": True}')
        self.require_audio = bool(require_audio)
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = list(samples) if samples is not None else list_videos(self.root, self.classes, self.extensions)
        if not self.samples:
            raise ValueError(f"root {self.root!r} holds no video files ending in {self.extensions}")
        self.targets = [label for _, label in self.samples]
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._status = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch of the per-item seeds; call before iterating (workers see it too)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._epoch.fill_(epoch)

    def unreadable(self) -> list[str]:
        """Paths found unreadable so far (by any process sharing this dataset)."""
        return [self.samples[i][0] for i in torch.nonzero(self._status == _UNREADABLE).flatten().tolist()]

    def split(self, fraction: float, seed: int | None = None) -> tuple[VideoFolder, VideoFolder]:
        """(rest, held-out): a seeded, per-class split putting round(fraction·n_c) of class c's files
        (at least one when fraction > 0 and the class has two or more) in the held-out part."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        generator = torch.Generator().manual_seed(sample_seed(self.seed if seed is None else seed, 0, 0))
        rest, held_out = [], []
        for label in range(len(self.classes)):
            members = [s for s in self.samples if s[1] == label]
            order = torch.randperm(len(members), generator=generator).tolist()
            count = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
            held_out += [members[i] for i in sorted(order[:count])]
            rest += [members[i] for i in sorted(order[count:])]
        return self._with_samples(rest), self._with_samples(held_out, augment=False)

    def _with_samples(self, samples, augment: bool | None = None) -> VideoFolder:
        return VideoFolder(
            self.root, self.frames, self.size, self.mode, self.transform, seed=self.seed,
            augment=self.augment if augment is None else augment, extensions=self.extensions,
            samples=samples, classes=self.classes, reader_kwargs=self.reader_kwargs,
            require_audio=self.require_audio,
        )

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        index %= len(self)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if self._status[candidate] == _UNREADABLE:
                continue
            try:
                return self._load(candidate, sample_seed(self.seed, self.epoch, index))
            except (VideoReadError, OSError) as error:
                self._report(candidate, error)
        raise ValueError(f"no file under {self.root!r} is a readable video ({len(self)} tried)")

    def _report(self, index: int, error: Exception) -> None:
        if self._status[index] != _UNREADABLE:
            self._status[index] = _UNREADABLE
            reason = error.reason if isinstance(error, VideoReadError) else (error.strerror or str(error))
            warnings.warn(f"VideoFolder: skipping unreadable video {self.samples[index][0]}: {reason}",
                          RuntimeWarning, stacklevel=3)

    def _load(self, index: int, seed: int):
        path, label = self.samples[index]
        generator = torch.Generator().manual_seed(seed)
        clip = self._read_rgb(path, generator) if self.mode == "rgb" else self._read_compressed(path, generator)
        if self.transform is None:
            sample = clip.permute(1, 0, 2, 3).float().div_(255.0) if self.mode == "rgb" else clip
        else:
            # The transform's own draws from torch's default generator are made deterministic too.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                sample = self.transform(clip)
        return sample, label

    def _read_rgb(self, path: str, generator: torch.Generator) -> torch.Tensor:
        """(T, 3, H, W) uint8; with augment, frame t is one of the two halves of slice t, maybe flipped."""
        if not self.augment:
            return read_frames(path, self.frames, size=self.size)
        pairs = read_frames(path, 2 * self.frames, size=self.size)
        pick = torch.arange(self.frames) * 2 + torch.randint(0, 2, (self.frames,), generator=generator)
        clip = pairs[pick]
        return clip.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else clip

    def _read_compressed(self, path: str, generator: torch.Generator) -> CompressedClip:
        clip = read_compressed(path, self.frames, size=self.size, **{"audio": False, **self.reader_kwargs})
        if self.require_audio and clip.audio is None:
            raise VideoReadError(path, "has no audio track, and this dataset's model reads audio")
        if self.augment and bool(torch.rand((), generator=generator) < 0.5):
            clip.iframes, clip.residual = clip.iframes.flip(-1), clip.residual.flip(-1)
            clip.motion = clip.motion.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
        return clip

    def __repr__(self) -> str:
        return (f"VideoFolder(root={self.root!r}, videos={len(self)}, classes={len(self.classes)}, "
                f"frames={self.frames}, size={self.size}, mode={self.mode!r})")


def collate_clips(batch: list) -> tuple:
    """DataLoader collate_fn: [(sample, label)] -> (batch of samples, (B,) int64 labels).

    RGB (and transformed) samples go through torch's default_collate; CompressedClips become a dict of
    stacked "iframes" (B, T, 3, H, W), "motion" (B, T, 2, h, w), "residual" (B, T, 3, H, W), "block_size",
    and "audio" (B, T, S) with "sample_rate" when every clip has audio at one rate (segments of clips of
    different durations are cut to the shortest, S samples: the log-mel features MM-ViT takes are means
    over a segment's windows).
    """
    if not batch:
        raise ValueError("batch must hold at least one (sample, label) pair")
    samples, labels = zip(*batch)
    if not isinstance(samples[0], CompressedClip):
        return default_collate(list(samples)), torch.as_tensor(labels, dtype=torch.int64)
    out = {key: torch.stack([getattr(c, key) for c in samples]) for key in ("iframes", "motion", "residual")}
    audio = [c.audio for c in samples]
    if all(a is not None for a in audio) and len({c.sample_rate for c in samples}) == 1:
        length = min(a.shape[-1] for a in audio)
        out["audio"], out["sample_rate"] = torch.stack([a[..., :length] for a in audio]), samples[0].sample_rate
    out["block_size"] = samples[0].block_size
    return out, torch.as_tensor(labels, dtype=torch.int64)
