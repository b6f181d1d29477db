"""Ctrl-C / SIGTERM during training stops after the current batch, with a resume hint."""

from __future__ import annotations

import os
import signal

import pytest

from training.interrupt import StopOnSignal


class _Model:
    stop_training = False


def test_signal_stops_after_batch_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    cb = StopOnSignal()
    cb.set_model(_Model()) if hasattr(cb, "set_model") else setattr(cb, "model", _Model())
    cb.on_train_begin()
    assert signal.getsignal(signal.SIGTERM) == cb._handler
    cb.on_train_batch_end(0)
    assert cb.model.stop_training is False
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler, the test process lives on
    cb.on_train_batch_end(1)
    assert cb.received == signal.SIGTERM and cb.model.stop_training is True
    with pytest.raises(KeyboardInterrupt):  # a second signal aborts at once
        os.kill(os.getpid(), signal.SIGTERM)
    cb.on_train_end()
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_ctrl_c_then_resume_continues_from_the_last_epoch(digits_dir, tmp_path) -> None:
    """A real `edgecam-train train` stopped by SIGINT exits 130 with the resume command, keeps
    its backup, and `--resume` continues with the next epoch instead of starting over."""
    import json
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "train",
        str(digits_dir),
        "--out",
        str(run),
        "--backbone",
        "small_cnn",
        "--input-size",
        "20",
        "--epochs",
        "5",
        "--flip",
        "none",
        "--patience",
        "10",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = run / "history.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if history.is_file() and len(json.loads(history.read_text())["epochs"]) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    done = [e["epoch"] for e in json.loads(history.read_text())["epochs"]]
    assert 2 <= max(done) < 5 and not (run / "run.json").exists()

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = [e["epoch"] for e in json.loads(history.read_text())["epochs"]]
    assert epochs == list(range(1, 6))  # each epoch once: continued, not restarted
    assert f"Epoch {max(done) + 1}/5" in resumed.stdout + resumed.stderr
    assert "Epoch 1/5" not in resumed.stdout + resumed.stderr
    assert (run / "run.json").is_file() and (run / "report.json").is_file()
