"""Reader fuzzing: the vidsel.io readers fed mutated copies of real small videos, in subprocesses.

A mutation is a pure function of (seed files, mutation id): `mutate` picks a seed file and one of the
kinds below (or a stack of two or three) from a NumPy generator seeded by the id, so any finding is
re-created from its id alone. Kinds: bit flips (anywhere, or in the first 4 KiB where the headers are),
truncation, a header spliced from another seed file (its head + this file's tail, or this file's head +
another's tail), and a zeroed byte range.

`python -m tests.io.fuzz_readers SEEDS.json WORKDIR ID...` is the worker: for every id it prints a
`{"start": id}` line, writes the mutated file, calls each reader on it and checks the outcome, prints a
`{"done": id, ...}` line and deletes the file. `run` drives workers: many ids per process for speed;
when a worker dies (a crash) or a case outlives its time limit (a hang), the case it had started is
re-run alone in a fresh process to confirm, and the batch goes on in a new worker from the next id.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

KINDS = ("bitflip", "header_bitflip", "truncate", "splice_head", "splice_tail", "zero", "stack")
SEGMENTS = 4  # frames / segments asked of read_frames and read_compressed


def mutate(seeds: list[bytes], mutation_id: int) -> tuple[int, str, bytes]:
    """(seed index, kind, mutated bytes) of mutation `mutation_id` of the seed files' contents."""
    rng = np.random.default_rng([0xF0221, int(mutation_id)])
    source = int(rng.integers(len(seeds)))
    kind = KINDS[int(rng.integers(len(KINDS)))]
    data = bytearray(seeds[source])
    kinds = [KINDS[int(k)] for k in rng.integers(0, len(KINDS) - 1, int(rng.integers(2, 4)))] if kind == "stack" \
        else [kind]
    for step in kinds:
        data = _apply(step, data, seeds, source, rng)
    if data == seeds[source]:  # e.g. zeros written over zeros, or a splice that rebuilt the file: one bit more
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return source, kind, bytes(data)


def _apply(kind: str, data: bytearray, seeds: list[bytes], source: int, rng: np.random.Generator) -> bytearray:
    size = len(data)
    if size < 2:
        return data
    if kind in ("bitflip", "header_bitflip"):
        span = min(size, 4096) if kind == "header_bitflip" else size
        for _ in range(int(rng.integers(1, 33))):
            position = int(rng.integers(span))
            data[position] ^= 1 << int(rng.integers(8))
        return data
    if kind == "truncate":
        # Half of the cuts inside the first 4 KiB (headers), half anywhere.
        limit = min(size, 4096) if rng.random() < 0.5 else size
        return data[: int(rng.integers(1, limit))]
    other = seeds[int(rng.integers(len(seeds)))] if len(seeds) > 1 else seeds[source]
    if kind == "splice_head":  # another file's head, then this file from some offset
        head = other[: int(rng.integers(16, min(len(other), 4096)))]
        return bytearray(head) + data[int(rng.integers(size)):]
    if kind == "splice_tail":  # this file's head, then another file's tail
        cut = int(rng.integers(1, size))
        return data[:cut] + bytearray(other[int(rng.integers(len(other))):])
    if kind == "zero":
        start = int(rng.integers(min(size, 4096))) if rng.random() < 0.5 else int(rng.integers(size))
        length = int(rng.integers(1, 4097))
        data[start : start + length] = bytes(len(data[start : start + length]))
        return data
    raise ValueError(f"unknown mutation kind {kind!r}")


# --- worker ------------------------------------------------------------------------------------------


def _check_frames(frames) -> str | None:
    import torch

    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        return f"read_frames returned {type(frames).__name__} {getattr(frames, 'dtype', '')}, not uint8"
    if frames.dim() != 4 or frames.shape[0] != SEGMENTS or frames.shape[1] != 3 or min(frames.shape) < 1:
        return f"read_frames returned shape {tuple(frames.shape)}, expected ({SEGMENTS}, 3, H, W)"
    return None


def _check_compressed(clip) -> str | None:
    import torch

    t, _, height, width = clip.iframes.shape
    g = clip.block_size
    rows, cols = -(-height // g), -(-width // g)
    if (t, clip.iframes.dtype) != (SEGMENTS, torch.uint8) or min(height, width) < 1:
        return f"iframes {tuple(clip.iframes.shape)} {clip.iframes.dtype}"
    if tuple(clip.motion.shape) != (SEGMENTS, 2, rows, cols) or not torch.isfinite(clip.motion).all():
        return f"motion {tuple(clip.motion.shape)} (expected ({SEGMENTS}, 2, {rows}, {cols}), finite)"
    if tuple(clip.residual.shape) != (SEGMENTS, 3, height, width) or clip.residual.abs().max() > 255:
        return f"residual {tuple(clip.residual.shape)} outside [-255, 255] or misshaped"
    if clip.audio is not None:
        # The seed files last one second: an audio segment of more than a minute is made of bad timestamps.
        if clip.audio.shape[0] != SEGMENTS or clip.audio.shape[1] > 60 * clip.sample_rate:
            return f"audio {tuple(clip.audio.shape)} at {clip.sample_rate} Hz, not ({SEGMENTS}, S <= 60 s)"
        if not torch.isfinite(clip.audio).all():
            return "audio not finite"
    return None


def _check_audio(result) -> str | None:
    import torch

    waveform, rate = result
    if waveform.dtype != torch.float32 or waveform.dim() != 2 or not torch.isfinite(waveform).all():
        return f"waveform {tuple(waveform.shape)} {waveform.dtype} not (C, N) finite float32"
    if not isinstance(rate, int) or rate <= 0:
        return f"sample rate {rate!r}"
    return None


def _readers():
    import vidsel.io as vio

    return {
        "read_frames": (lambda p: vio.read_frames(p, SEGMENTS), _check_frames),
        "read_compressed": (lambda p: vio.read_compressed(p, SEGMENTS), _check_compressed),
        "read_compressed(intra_fallback)": (lambda p: vio.read_compressed(p, SEGMENTS, intra_fallback=True),
                                            _check_compressed),
        "read_audio": (lambda p: vio.read_audio(p), _check_audio),
    }


def outcome(reader, check, path: str) -> str:
    """"ok", "VideoReadError", or "FAIL: ..." (another exception, a message not naming the file, or an
    implausible result)."""
    from vidsel.io import VideoReadError

    try:
        result = reader(path)
    except VideoReadError as error:
        if error.path != path or not str(error).startswith(path):
            return f"FAIL: {type(error).__name__} does not name the file: {error}"
        return "VideoReadError"
    except Exception as error:  # noqa: BLE001 - any other exception is the finding
        return f"FAIL: {type(error).__name__}: {error}"
    problem = check(result)
    return "ok" if problem is None else f"FAIL: accepted with an implausible result: {problem}"


def worker(seeds_file: str, workdir: str, ids: list[int]) -> None:
    import warnings

    warnings.simplefilter("ignore")
    with open(seeds_file) as handle:
        seed_paths = json.load(handle)
    seeds = [open(p, "rb").read() for p in seed_paths]
    readers = _readers()
    for mutation_id in ids:
        print(json.dumps({"start": mutation_id}), flush=True)
        source, kind, data = mutate(seeds, mutation_id)
        path = os.path.join(workdir, f"mutation_{mutation_id:05d}_{kind}{os.path.splitext(seed_paths[source])[1]}")
        with open(path, "wb") as handle:
            handle.write(data)
        began = time.perf_counter()
        outcomes = {name: outcome(read, check, path) for name, (read, check) in readers.items()}
        seconds = time.perf_counter() - began
        os.remove(path)
        print(json.dumps({"done": mutation_id, "kind": kind, "seed": os.path.basename(seed_paths[source]),
                          "outcomes": outcomes, "seconds": round(seconds, 4)}), flush=True)


# --- driver ------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Per-mutation results of `run`: done (id -> record), crashes / hangs (id -> description)."""

    done: dict
    crashes: dict
    hangs: dict
    workers: int = 0
    seconds: float = 0.0

    def slowest(self) -> tuple[int, float] | None:
        """(id, seconds) of the mutation whose reads took longest (wall clock, all readers)."""
        if not self.done:
            return None
        mutation_id = max(self.done, key=lambda i: self.done[i]["seconds"])
        return mutation_id, self.done[mutation_id]["seconds"]

    def failures(self) -> dict:
        """id -> {reader: "FAIL: ..."} of the mutations a reader mishandled without crashing."""
        bad = {}
        for mutation_id, record in self.done.items():
            failed = {r: o for r, o in record["outcomes"].items() if o.startswith("FAIL")}
            if failed:
                bad[mutation_id] = failed
        return bad


def _launch(seeds_file: str, workdir: str, ids: list[int], stderr_path: str) -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    with open(stderr_path, "ab") as stderr:  # FFmpeg logs to stderr: a file, never a pipe that could fill
        return subprocess.Popen([sys.executable, "-m", "tests.io.fuzz_readers", seeds_file, workdir, *map(str, ids)],
                                stdout=subprocess.PIPE, stderr=stderr, cwd=root, env=env)


def _drive(process: subprocess.Popen, case_limit: float, start_limit: float, on_line) -> tuple[str, int | None]:
    """Reads the worker's lines until it exits; returns ("exit", code) or ("hang", None) after killing it."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline, buffer = time.monotonic() + start_limit, b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(timeout=remaining):
                process.kill()
                process.wait()
                return "hang", None
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                return "exit", process.wait()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                on_line(json.loads(line))
                deadline = time.monotonic() + case_limit
    finally:
        selector.close()
        process.stdout.close()


def run(seed_paths: list[str], ids: list[int], workdir: str, *, batch_size: int = 250,
        case_limit: float = 30.0, start_limit: float = 180.0) -> Report:
    """Runs the mutations `ids` of the seed files through every reader, `batch_size` per worker process.

    case_limit: seconds one mutation (all readers) may take; start_limit: seconds for a worker's imports.
    """
    os.makedirs(workdir, exist_ok=True)
    seeds_file = os.path.join(workdir, "seeds.json")
    with open(seeds_file, "w") as handle:
        json.dump([os.path.abspath(p) for p in seed_paths], handle)
    stderr_path = os.path.join(workdir, "worker_stderr.log")
    report, began = Report({}, {}, {}), time.monotonic()
    pending = list(ids)
    while pending:
        batch, started = pending[:batch_size], []

        def on_line(message, started=started):
            if "start" in message:
                started.append(message["start"])
            else:
                report.done[message["done"]] = message

        report.workers += 1
        status, code = _drive(_launch(seeds_file, workdir, batch, stderr_path), case_limit, start_limit, on_line)
        unfinished = [i for i in started if i not in report.done]
        if status == "exit" and code == 0 and not unfinished:
            pending = pending[len(batch):]
            continue
        if not started:
            raise RuntimeError(f"fuzz worker failed before its first case ({status}, exit code {code}); "
                               f"see {stderr_path}")
        culprit = unfinished[0] if unfinished else started[-1]
        # Confirm alone, in a fresh process: the finding is the case's, not an earlier one's side effect.
        alone_started: list[int] = []
        report.workers += 1
        alone_status, alone_code = _drive(
            _launch(seeds_file, workdir, [culprit], stderr_path), case_limit, start_limit,
            lambda m: alone_started.append(m.get("start")) if "start" in m else report.done.__setitem__(m["done"], m))
        reproduced = culprit not in report.done
        description = (f"{status} (exit code {code}) in a batch; alone: {alone_status} (exit code {alone_code}), "
                       f"{'reproduced' if reproduced else 'not reproduced'}")
        (report.hangs if status == "hang" else report.crashes)[culprit] = description
        pending = pending[pending.index(culprit) + 1:]
    report.seconds = time.monotonic() - began
    return report


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], [int(i) for i in sys.argv[3:]])
