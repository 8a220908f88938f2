"""The `vidsel` command (vidsel.cli): subcommands, --help, one-line errors with a non-zero exit."""

import os
import subprocess
import sys

import pytest
from PIL import Image

import vidsel
from tests.video_factory import make_video
from vidsel import cli, flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("info", "flops", "bench", "viz"))
    assert cli.main([]) == 2  # no command: help, and a failure exit


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: vidsel {command}")


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"vidsel {vidsel.__version__}") and "backends:" in out


def test_flops_prints_the_count(capsys):
    assert cli.main(["flops", "testa_f16", "--frames", "8"]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert float(total.split()[1]) == pytest.approx(flops.count_model("testa_f16", num_frames=8).gmacs, rel=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["flops", "no_such_model"], "vidsel flops: error: unknown model 'no_such_model'"),
    (["flops", "testa_f16", "--frames", "0"], "vidsel flops: error: --frames must be a positive int"),
    (["bench", "--only", "no_such_bench"], "vidsel bench: error: unknown benchmark(s) ['no_such_bench']"),
    (["viz", "missing.mp4", "--model", "testa_f16", "-o", "x.png"], "vidsel viz: error: missing.mp4: no such video"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    # (torch may log an unrelated import-time warning on stderr; the error itself is one line)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vidsel")]
    assert len(err) == 1 and err[0].startswith(message)


def test_bench_forwards_to_the_benchmark_runner(monkeypatch):
    from benchmarks import run as runner

    calls = []
    monkeypatch.setattr(runner, "main", lambda argv: calls.append(argv) or 0)
    assert cli.main(["bench", "--only", "patch", "token_merging", "--no-readme"]) == 0
    assert calls == [["--no-readme", "--only", "patch", "token_merging"]]


def test_viz_writes_pictures(tmp_path):
    video = make_video(str(tmp_path / "clip.mp4"), size=(64, 64), num_frames=16, audio=None)
    png = tmp_path / "merges.png"
    args = ["--frames", "4", "--img-size", "64", "--set", "depth=2", "embed_dim=64", "num_heads=4", "r_frames=1",
            "r_patches=4"]
    assert cli.main(["viz", video.path, "--model", "testa_f16", "-o", str(png), *args]) == 0
    picture = Image.open(png)
    assert picture.size == (4 * 64 + 3 * 4, 10 + 4 + 64 + 4 + 64)  # 4 columns: bar, frame, group map
    gif = tmp_path / "motion.gif"
    assert cli.main(["viz", video.path, "--model", "motion", "--frames", "2", "--img-size", "64", "-o", str(gif)]) == 0
    assert Image.open(gif).n_frames == 2


def test_set_parses_python_literals():
    assert [cli._parse_setting(item) for item in ("depth=2", "ratio=0.5", "stage_depths=(1, 1, 2, 1)",
                                                  "prop_attn=true", "partition=importance")] == [
        ("depth", 2), ("ratio", 0.5), ("stage_depths", (1, 1, 2, 1)), ("prop_attn", True), ("partition", "importance")]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cli._parse_setting("depth")


def test_console_script_is_declared(monkeypatch):
    import setuptools

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.setenv("VIDSEL_SKIP_EXT", "1")
    monkeypatch.chdir(ROOT)
    source = open(os.path.join(ROOT, "setup.py")).read()
    exec(compile(source, "setup.py", "exec"), {"__name__": "__main__", "__file__": os.path.join(ROOT, "setup.py")})
    assert "vidsel = vidsel.cli:main" in captured["entry_points"]["console_scripts"]
    module, function = "vidsel.cli", "main"
    assert callable(getattr(sys.modules[module], function))


def test_exit_code_of_the_process():
    result = subprocess.run([sys.executable, "-m", "vidsel.cli", "flops", "no_such_model"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("vidsel")]
    assert len(errors) == 1 and errors[0].startswith("vidsel flops: error: unknown model")
