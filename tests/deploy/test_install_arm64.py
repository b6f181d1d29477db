"""deploy/install.sh on 64-bit Arm: a Debian Bookworm arm64 root file system (debootstrap) run
under qemu-user-static. ``make test-arm64`` (minutes; left out of the default run).

install.sh (with --faces and --mosquitto) runs to completion twice in that root (the second
run changes nothing; asked for the Coral runtime, which it cannot have here, it says so and
finishes), the installed device then classifies cat.bmp with the aarch64 wheels as the
``edgecam`` user, the installed unit passes ``systemd-analyze verify`` there, and ``--uninstall`` / ``--purge`` remove what
they should. Needs root (binfmt_misc, chroot, mounts), debootstrap and qemu-user-static
(.ci/run installs them with EDGECAM_CI_ARM64=1); the Debian mirror and PyPI must be reachable.

The pristine root is cached in ``$EDGECAM_CACHE`` (default ~/.cache/edgecam/bookworm-arm64) and
copied for every run. qemu-user shows the host's /proc/cpuinfo, on which LiteRT's CPU detection
crashes, so an Arm one (a Raspberry Pi 4's) is bind-mounted over it inside the root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.arm64, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGECAM_CACHE", Path.home() / ".cache" / "edgecam"))
BASE = CACHE / "bookworm-arm64"
MIRROR = os.environ.get("EDGECAM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PI4_CORE = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""
PI4_CPUINFO = (
    "\n".join(PI4_CORE.format(n=n) for n in range(4))
    + "\nHardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
)


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (binfmt_misc, chroot, mounts)")
    for tool in ("debootstrap", "chroot", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (.ci/run installs debootstrap and qemu-user-static)")
    if not QEMU_CONF.exists():
        pytest.skip(f"{QEMU_CONF} missing: apt-get install qemu-user-static")


def _ensure_binfmt() -> None:
    """Mount binfmt_misc and register qemu-aarch64 (its F flag makes it work in a chroot)."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / "qemu-aarch64").exists():
        (BINFMT / "register").write_text(QEMU_CONF.read_text().strip())


def _ensure_base(timings: dict[str, float]) -> None:
    """The pristine Bookworm arm64 root, made once with debootstrap and cached."""
    if (BASE / "usr" / "bin" / "bash").exists():
        return
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = BASE.with_name(BASE.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log = CACHE / "debootstrap.log"
    with log.open("w") as out:
        done = subprocess.run(
            ["debootstrap", "--arch=arm64", "--variant=minbase",
             "--include=ca-certificates,systemd", "bookworm", str(partial), MIRROR],
            stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    assert done.returncode == 0, f"debootstrap failed, see {log}"
    partial.rename(BASE)
    timings["debootstrap"] = time.monotonic() - started


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p.startswith(prefix)]


@contextlib.contextmanager
def arm64_root(work: Path, test_data: Path) -> Iterator[Path]:
    """A fresh copy of the cached root with /proc, an Arm cpuinfo, the checkout at
    /src/edgecam and the reference data at /data; everything unmounted and removed after."""
    root = work / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(BASE), str(root)], check=True)
    # the checkout's files (not .venv, .git or anything ignored); install.sh builds from a copy
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src, dst = REPO / name, root / "src" / "edgecam" / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    wanted = ["coral/mobilenet_v2_1.0_224_quant.tflite", "coral/imagenet_labels.txt",
              "coral/cat.bmp", "mediapipe/face_detection_full_range_sparse.tflite",
              "mediapipe/face_detection_short_range.tflite"]  # fmt: skip
    for name in wanted:
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(test_data / name, root / "data" / name)
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # the CAs this host trusts (an egress proxy's, say), so that pip in the root trusts them too
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir():
        shutil.copytree(local_cas, root / local_cas.relative_to("/"), dirs_exist_ok=True)
    cpuinfo = work / "cpuinfo"
    cpuinfo.write_text(PI4_CPUINFO)
    mounted: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        mounted.append(root / "proc")
        subprocess.run(
            ["mount", "--bind", str(cpuinfo), str(root / "proc" / "cpuinfo")], check=True
        )
        mounted.append(root / "proc" / "cpuinfo")
        yield root
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)
        left = _mounts_under(root)
        assert not left, f"still mounted, not removing {root}: {left}"
        shutil.rmtree(root, ignore_errors=True)


def in_root(root: Path, *argv: str, log: Path | None = None, timeout: float = 1800):
    env = ["env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
           "PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "PIP_DEFAULT_TIMEOUT=180"]  # fmt: skip
    done = subprocess.run(
        ["chroot", str(root), *env, *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    return done


def _tail(done: subprocess.CompletedProcess, lines: int = 40) -> str:
    return "\n".join((done.stdout + done.stderr).splitlines()[-lines:])


def test_install_twice_then_classify_cat_on_arm64(tmp_path, test_data):
    _require()
    _ensure_binfmt()
    timings: dict[str, float] = {}
    _ensure_base(timings)
    with arm64_root(tmp_path, test_data) as root:
        in_root(root, "update-ca-certificates")
        machine = in_root(root, "uname", "-m").stdout.strip()
        assert machine == "aarch64", "the root does not run under qemu-aarch64"

        install = ["bash", "/src/edgecam/deploy/install.sh", "--models", "/data", "--faces"]
        started = time.monotonic()
        first = in_root(root, *install, "--mosquitto", log=tmp_path / "install-1.log")
        timings["install (first)"] = time.monotonic() - started
        assert first.returncode == 0, _tail(first)
        assert "creating system user edgecam" in first.stdout
        assert "python3-picamera2 is not in this system's apt sources" in first.stdout
        assert (root / "usr/sbin/mosquitto").exists()  # --mosquitto

        models = root / "var/lib/edgecam/models"
        config = root / "etc/edgecam/device.yaml"
        sha12 = os.readlink(models / "current")
        assert (models / sha12 / "model.json").exists()
        assert (models / "face_detection_full_range_sparse.tflite").exists()  # --faces
        config_before = config.read_bytes()
        assert b"path: /var/lib/edgecam/models/current" in config_before
        wants = root / "etc/systemd/system/multi-user.target.wants/edgecam-device.service"
        assert wants.is_symlink(), "the unit was not enabled"

        config.write_bytes(config_before + b"# edited by the operator\n")
        started = time.monotonic()
        # again, now also asking for the Coral runtime, whose apt repository is out of reach here
        second = in_root(root, *install, "--coral", log=tmp_path / "install-2.log")
        timings["install (again)"] = time.monotonic() - started
        assert second.returncode == 0, _tail(second)
        assert "creating system user" not in second.stdout
        assert "apt-get install" not in second.stdout  # nothing left to install
        assert f"models/current -> {sha12} (kept)" in second.stdout
        assert config.read_bytes() == config_before + b"# edited by the operator\n"  # kept
        assert os.readlink(models / "current") == sha12
        assert "the Coral Edge TPU runtime could not be installed" in second.stderr
        assert "done, without the Coral Edge TPU runtime" in second.stdout
        assert not (root / "etc/apt/sources.list.d/coral-edgetpu.list").exists()  # apt as it was
        assert "state_dir: /var/lib/edgecam " in config.read_text()  # the model store's home

        versions = in_root(
            root, "/opt/edgecam/venv/bin/python", "-c",
            "import platform, numpy, cv2; print(platform.machine(), numpy.__version__, cv2.__version__)",
        )  # fmt: skip
        assert versions.stdout.split() == ["aarch64", "1.26.4", "4.11.0"], _tail(versions)

        started = time.monotonic()
        classify = in_root(
            root, "runuser", "-u", "edgecam", "--", "/opt/edgecam/venv/bin/edgecam-device",
            "classify", "/data/coral/cat.bmp", "--model", "/var/lib/edgecam/models/current",
        )  # fmt: skip
        timings["classify cat.bmp"] = time.monotonic() - started
        assert classify.returncode == 0, _tail(classify)
        top = classify.stdout.splitlines()[0]
        assert top.startswith("Egyptian cat: "), classify.stdout
        assert float(top.split(": ")[1]) > 0.7

        verify = in_root(root, "systemd-analyze", "verify", "edgecam-device.service")
        assert verify.returncode == 0 and not verify.stderr.strip(), _tail(verify)

        kept = in_root(root, "bash", "/src/edgecam/deploy/install.sh", "--uninstall")
        assert kept.returncode == 0, _tail(kept)
        assert not (root / "opt/edgecam").exists()
        assert not (root / "etc/systemd/system/edgecam-device.service").exists()
        assert not wants.is_symlink()
        assert config.exists() and (models / sha12 / "model.tflite").exists()  # data kept

        purged = in_root(root, "bash", "/src/edgecam/deploy/install.sh", "--uninstall", "--purge")
        assert purged.returncode == 0, _tail(purged)
        assert not (root / "etc/edgecam").exists() and not (root / "var/lib/edgecam").exists()
        assert in_root(root, "id", "edgecam").returncode != 0
    print("\narm64 install timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
