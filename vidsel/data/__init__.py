"""vidsel.data: datasets over folders of real video files, read with vidsel.io.

- ``VideoFolder(root, frames=8, size=224, mode="rgb" | "compressed", transform=None)``: one class per
  sub-folder (torchvision ``ImageFolder`` convention); unreadable files are reported once and skipped.
- ``collate_clips``: the DataLoader ``collate_fn`` for both modes (stacks CompressedClip fields too).
- ``sample_seed(seed, epoch, index)``: the seed behind every random choice made for one item.
"""

from vidsel.data.video_folder import VIDEO_EXTENSIONS, VideoFolder, collate_clips, sample_seed

__all__ = ["VIDEO_EXTENSIONS", "VideoFolder", "collate_clips", "sample_seed"]
