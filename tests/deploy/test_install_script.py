"""deploy/install.sh: shellcheck, and its command line (only what stops before touching the
system: the full install runs in an arm64 root in test_install_arm64.py, `make test-arm64`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"


def test_install_sh_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck; .ci/run installs it)")
    done = subprocess.run(
        ["shellcheck", "--severity=style", str(INSTALL)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["--help"], 0, "usage: sudo deploy/install.sh"),
        (["--frobnicate"], 2, "error: unknown option: --frobnicate"),
        (["--purge"], 2, "error: --purge goes with --uninstall"),
        (["--models"], 2, "error: --models needs a folder"),
    ],
)
def test_install_sh_command_line(args, status, says):
    done = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True)
    assert done.returncode == status
    assert says in done.stdout + done.stderr
