"""Reader fuzzing: read_frames / read_compressed (also with intra_fallback) / read_audio on mutated copies
of real small videos (bit flips, truncations, spliced headers, zeroed ranges; see tests/io/fuzz_readers.py),
each worker a subprocess with a per-mutation time limit: no crash, no hang, and every failure a
VideoReadError naming the file (an accepted file must give a well-formed result).

VIDSEL_FUZZ_MUTATIONS sets the count: 50 by default (`make test`), 2000 under `make test-long`.
"""

import os

import pytest

from tests.io import fuzz_readers
from tests.video_factory import make_video

MUTATIONS = int(os.environ.get("VIDSEL_FUZZ_MUTATIONS", "50"))


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    """Small real files: MPEG-4 Part 2 + AAC in MP4, H.264 + PCM in Matroska, MPEG-4 Part 2 in AVI,
    H.264 + AAC in MPEG-TS, VP8 + Opus in WebM."""
    root = tmp_path_factory.mktemp("fuzz_seeds")
    common = dict(size=(32, 48), num_frames=12, fps=12, gop=6)
    return [
        make_video(root / "mpeg4_aac.mp4", codec="mpeg4", **common).path,
        make_video(root / "h264_pcm.mkv", codec="libx264", audio_codec="pcm_s16le", sample_rate=8000,
                   options={"crf": "30"}, **common).path,
        make_video(root / "mpeg4.avi", codec="mpeg4", audio=None, **common).path,
        make_video(root / "h264_aac.ts", codec="libx264", options={"crf": "30"}, **common).path,
        make_video(root / "vp8_opus.webm", codec="libvpx", audio_codec="libopus", sample_rate=48000, **common).path,
    ]


def test_mutator_is_a_function_of_the_id_and_covers_every_kind(seed_files):
    seeds = [open(p, "rb").read() for p in seed_files]
    assert fuzz_readers.mutate(seeds, 7) == fuzz_readers.mutate(seeds, 7)
    mutations = [fuzz_readers.mutate(seeds, i) for i in range(200)]
    assert {kind for _, kind, _ in mutations} == set(fuzz_readers.KINDS)
    assert {source for source, _, _ in mutations} == set(range(len(seeds)))
    assert all(data != seeds[source] for source, _, data in mutations)


def test_mutated_files_never_crash_hang_or_fail_unnamed(seed_files, tmp_path):
    report = fuzz_readers.run(seed_files, list(range(MUTATIONS)), str(tmp_path / "work"))
    print(f"\nreader fuzzing: {MUTATIONS} mutations x 4 readers, {len(report.crashes)} crashes, "
          f"{len(report.hangs)} hangs, {len(report.failures())} wrong failures, {report.workers} workers, "
          f"{report.seconds:.1f} s; slowest mutation (id, s): {report.slowest()}")
    assert not report.crashes, report.crashes
    assert not report.hangs, report.hangs
    assert not report.failures(), report.failures()
    assert sorted(report.done) == list(range(MUTATIONS))
    outcomes = [o for record in report.done.values() for o in record["outcomes"].values()]
    # The mutations reach past the first check: some files are still read, many are refused.
    assert outcomes.count("VideoReadError") >= len(outcomes) // 10 and outcomes.count("ok") >= len(outcomes) // 10


# Mutations that crashed a reader or failed without a VideoReadError before vidsel.io handled them, by
# seed set: a video stream naming an unknown codec (20), metadata that is not UTF-8 (275), AAC audio
# switching to 51 channels mid-stream (366, a segfault in FFmpeg's resampler), frame sizes changing
# mid-stream (1609, 2645, 2987), an MPEG-TS PTS with a flipped high bit making 3 GB of audio segments out of
# a one-second file (7149). Encoders may differ elsewhere, so these may not hit the same bytes there.
PAST_FINDINGS = {3: [20, 275, 366], 5: [1609, 2645, 2987, 7149]}


def test_past_findings_stay_fixed(seed_files, tmp_path):
    for count, ids in PAST_FINDINGS.items():
        report = fuzz_readers.run(seed_files[:count], ids, str(tmp_path / f"work{count}"))
        assert not report.crashes and not report.hangs and not report.failures(), (report.crashes, report.hangs,
                                                                                   report.failures())
        assert sorted(report.done) == ids
