"""The CLI scaffold shared by edgecam-device, edgecam-train and edgecam-convert (device.cliapp).

Through the real console scripts: a user error reads ``error: ...`` / ``  fix: ...`` and exits
2, Ctrl-C exits 130, a closed stdout pipe ends quietly, an unexpected exception is one line
(exit 1) whose traceback only ``-v`` shows. In-process: the rules of the scaffold itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.cliapp import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliApp,
)
from device.errors import ConfigError, EdgecamError

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

# Loaded through PYTHONPATH before the console script runs: replaces one function that a
# command calls with one that raises (or, given a marker path, one that says it has started and
# then waits), so the scaffold itself runs unchanged.
SITECUSTOMIZE = """
import importlib, os, threading
target = os.environ.get("EDGECAM_TEST_FAULT")
marker = os.environ.get("EDGECAM_TEST_WAITING")
if target:
    module, attr = target.split(":")
    def injected_fault(*args, **kwargs):
        if marker:
            open(marker, "w").close()
            threading.Event().wait(600)  # blocks until the test interrupts the process
        raise RuntimeError("injected fault for the scaffold test")
    setattr(importlib.import_module(module), attr, injected_fault)
"""


def _script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in this environment (pip install -e .)")
    return str(path)


def _env(tmp_path: Path, fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if fault:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        env["EDGECAM_TEST_FAULT"] = fault
    return env


def _run(tmp_path: Path, argv: list[str], fault: str | None = None, **kw):
    return subprocess.run(
        [_script(argv[0]), *argv[1:]],
        cwd=tmp_path,
        env=_env(tmp_path, fault),
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )


def _tiny_dataset(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


# -- user errors: error: / fix:, exit 2, no traceback ------------------------------------------


def test_device_config_error_prints_error_and_fix_lines(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    proc = _run(tmp_path, ["edgecam-device", "validate", "--config", str(missing)])
    assert proc.returncode == EXIT_ERROR == 2
    assert proc.stderr.splitlines() == [
        f"error: config file not found: {missing}",
        "  fix: copy config/device.example.yaml and edit it",
    ]
    assert proc.stdout == ""


def test_train_data_error_is_one_line_named_after_the_tool(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = _run(tmp_path, ["edgecam-train", "split", str(missing)])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"edgecam-train: error: data folder not found: {missing}"]


def test_convert_usage_error_has_a_fix_line(tmp_path: Path) -> None:
    proc = _run(tmp_path, ["edgecam-convert"])
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr
    assert "error: nothing to convert" in lines
    assert any(ln.startswith("  fix: usage: edgecam-convert runs/<name>") for ln in lines)


def test_argparse_usage_errors_also_exit_2(tmp_path: Path) -> None:
    proc = _run(tmp_path, ["edgecam-device", "classify", "x.jpg"])  # --model is required
    assert proc.returncode == 2
    assert "the following arguments are required: --model" in proc.stderr


# -- unexpected exceptions: one line, exit 1; -v shows the traceback --------------------------

FAULTS = [
    pytest.param(
        ["edgecam-device", "validate", "--config", "x.yaml"],
        "device.config:load_config",
        id="device",
    ),
    pytest.param(["edgecam-train", "split", "data"], "training.dataset:scan_dataset", id="train"),
    pytest.param(["edgecam-convert", "runs/x"], "conversion.cli:_source", id="convert"),
]


@pytest.mark.parametrize(("argv", "fault"), FAULTS)
def test_unexpected_error_is_one_line_without_traceback(
    argv: list[str], fault: str, tmp_path: Path
) -> None:
    proc = _run(tmp_path, argv, fault=fault)
    assert proc.returncode == EXIT_FAILURE == 1
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "internal error" in ln]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert "RuntimeError: injected fault for the scaffold test" in line
    assert "(at sitecustomize.py:" in line and "in injected_fault)" in line
    assert "run with -v for the traceback" in line and "report it" in line


@pytest.mark.parametrize(("argv", "fault"), FAULTS)
def test_verbose_shows_the_traceback(argv: list[str], fault: str, tmp_path: Path) -> None:
    # -v after the subcommand: the scaffold adds it to every subcommand
    proc = _run(tmp_path, [*argv, "-v"], fault=fault)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: injected fault for the scaffold test" in proc.stderr
    assert "internal error: RuntimeError" in proc.stderr
    assert "run with -v" not in proc.stderr


# -- Ctrl-C: exit 130, no traceback ------------------------------------------------------------


def _interrupt(tmp_path: Path, argv: list[str], fault: str) -> tuple[int, str]:
    """Start ``argv``, wait until its command is running (blocked in ``fault``), send SIGINT."""
    marker = tmp_path / "waiting"
    env = {**_env(tmp_path, fault), "EDGECAM_TEST_WAITING": str(marker)}
    proc = subprocess.Popen(
        [_script(argv[0]), *argv[1:]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell may start background jobs with SIGINT ignored; the test needs the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(f"the command never started (exit {proc.returncode}): {err[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize(
    ("argv", "fault", "last_line"),
    [
        (["edgecam-device", "validate", "--config", "x.yaml"], FAULTS[0].values[1], "interrupted"),
        (["edgecam-train", "split", "data"], FAULTS[1].values[1], "edgecam-train: interrupted"),
    ],
    ids=["device", "train"],
)
def test_ctrl_c_exits_130_without_traceback(
    argv: list[str], fault: str, last_line: str, tmp_path: Path
) -> None:
    code, err = _interrupt(tmp_path, argv, fault)
    assert code == EXIT_INTERRUPTED == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == last_line


# -- a closed stdout pipe (`... | head`) -------------------------------------------------------


def test_closed_stdout_pipe_ends_quietly(tmp_path: Path) -> None:
    data = _tiny_dataset(tmp_path / "data")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is printed
    try:
        proc = subprocess.run(
            [_script("edgecam-train"), "check", str(data), "-q"],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=180,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == EXIT_BROKEN_PIPE == 141
    assert proc.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


# -- the scaffold in-process -------------------------------------------------------------------


def _app(command, sub: bool = True) -> CliApp:
    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="tool")
        if sub:
            subs = parser.add_subparsers(dest="command", required=True)
            subs.add_parser("go")
        return parser

    return CliApp(build, {"go": command} if sub else command, error_prefix="tool: ")


def test_exit_codes_of_each_outcome(capsys) -> None:
    class Interrupted(EdgecamError):
        exit_code = EXIT_INTERRUPTED

    def raiser(exc: BaseException):
        def command(args: argparse.Namespace) -> int:
            raise exc

        return command

    assert _app(lambda a: EXIT_OK).main(["go"]) == 0
    assert _app(lambda a: 7).main(["go"]) == 7  # a command's own status passes through
    assert _app(raiser(ConfigError("bad", "do this"))).main(["go"]) == 2
    assert capsys.readouterr().err.splitlines() == ["tool: error: bad", "  fix: do this"]
    assert _app(raiser(PermissionError(13, "Permission denied", "/x"))).main(["go"]) == 2
    assert capsys.readouterr().err == "tool: error: [Errno 13] Permission denied: '/x'\n"
    assert _app(raiser(KeyboardInterrupt())).main(["go"]) == 130
    assert capsys.readouterr().err == "tool: interrupted\n"
    # an error that says it is an interruption: its message, no "error:", status 130
    assert _app(raiser(Interrupted("stopped; resume with: tool go"))).main(["go"]) == 130
    assert capsys.readouterr().err == "tool: stopped; resume with: tool go\n"
    assert _app(raiser(ValueError("x\ny"))).main(["go"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("tool: error: internal error: ValueError: x (at ")


def test_verbosity_options_before_and_after_the_subcommand() -> None:
    seen: list[int] = []
    app = _app(lambda a: seen.append(logging.getLogger().level) or 0)
    for argv, level in [
        (["go"], logging.INFO),
        (["-v", "go"], logging.DEBUG),
        (["go", "-v"], logging.DEBUG),
        (["go", "-q"], logging.WARNING),
        (["-q", "go"], logging.WARNING),
    ]:
        assert app.main(argv) == 0
        assert seen.pop() == level, argv
    single = _app(lambda a: seen.append(logging.getLogger().level) or 0, sub=False)
    assert single.main(["--verbose"]) == 0 and seen.pop() == logging.DEBUG


def test_training_and_conversion_errors_share_the_base() -> None:
    from conversion.errors import ConversionError, EdgeTPUCompileError
    from training.errors import DatasetError, TrainingError, TrainingInterrupted

    for cls in (TrainingError, DatasetError, ConversionError, EdgeTPUCompileError):
        assert issubclass(cls, EdgecamError)
    exc = DatasetError("data folder not found: x")
    assert exc.message == "data folder not found: x" and exc.hint is None
    assert TrainingInterrupted("stopped").exit_code == EXIT_INTERRUPTED


@pytest.mark.parametrize(
    ("argv", "mean", "std"),
    [
        (["--mean", "127.5", "runs/x"], [127.5], None),
        (["--mean", "1", "2", "3", "--std", "127.5", "runs/x"], [1.0, 2.0, 3.0], [127.5]),
        (["--std", "0.5,1,2", "runs/x"], None, [0.5, 1.0, 2.0]),
    ],
)
def test_convert_mean_std_do_not_swallow_the_run_folder(argv, mean, std) -> None:
    from conversion.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.run == Path("runs/x") and args.mean == mean and args.std == std


def test_convert_mean_takes_one_or_three_numbers(capsys) -> None:
    from conversion.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--mean", "1,2", "runs/x"])
    assert exc.value.code == 2
    assert "give 1 or 3 numbers (R,G,B), not 2" in capsys.readouterr().err


def test_journal_stream_detection(tmp_path: Path, monkeypatch) -> None:
    from device.cliapp import stderr_is_journal

    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal()  # systemd names this very stream: no time stamps of ours
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stderr_is_journal()  # inherited from a service, but stderr went elsewhere
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal()
