#!/usr/bin/env bash
# edgecam installer for Raspberry Pi OS / Debian Bookworm and Trixie (arm64; x86-64 works too).
#
#   sudo deploy/install.sh [--models DIR] [--mosquitto] [--coral]   install or upgrade
#   sudo deploy/install.sh --uninstall [--purge]                    remove
#
# What it sets up (docs/deploy.md):
#   apt       python3, python3-venv, ca-certificates; python3-picamera2 where the Raspberry Pi
#             repository provides it; mosquitto (--mosquitto); libedgetpu1-std (--coral)
#   /opt/edgecam/venv    a venv (--system-site-packages, so it sees apt's picamera2) with
#                        edgecam and its pinned [device] extra
#   edgecam   a system user in the video group that runs the service
#   /etc/edgecam/        device.yaml (from config/device.example.yaml; never overwritten) and env
#                        (secrets: EDGECAM_MQTT_PASSWORD=...)
#   /var/lib/edgecam/    state: models/<sha12>/ bundles with current and previous links,
#                        the alert outbox, snapshots
#   edgecam-device.service   the systemd unit, enabled and (re)started
#
# Running it again upgrades the code and changes nothing else (idempotent). pip honours the usual
# PIP_* variables (PIP_INDEX_URL, PIP_FIND_LINKS, ...).
set -euo pipefail

OPT=/opt/edgecam
VENV=$OPT/venv
ETC=/etc/edgecam
STATE=/var/lib/edgecam
MODELS=$STATE/models
CACHE=/var/cache/edgecam
USER_NAME=edgecam
UNIT_NAME=edgecam-device.service
UNIT=/etc/systemd/system/$UNIT_NAME
CORAL_LIST=/etc/apt/sources.list.d/coral-edgetpu.list
CORAL_KEY=/etc/apt/keyrings/coral-edgetpu.gpg
CORAL_KEY_URL=https://packages.cloud.google.com/apt/doc/apt-key.gpg
CORAL_REPO=https://packages.cloud.google.com/apt
OUR_APT_PACKAGES=(python3-picamera2 mosquitto libedgetpu1-std)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECKOUT="$(dirname "$HERE")"

usage() {
    cat <<'EOF'
usage: sudo deploy/install.sh [options]

Install or upgrade edgecam on this machine (Raspberry Pi OS / Debian Bookworm or Trixie).

options:
  --source PATH    what to install: a checkout folder or a wheel (default: this checkout)
  --models DIR     copy the reference model from DIR (laid out like the test data: coral/...)
                   instead of downloading it
  --mosquitto      also install the Mosquitto MQTT broker on this machine
  --coral          also install the Coral Edge TPU runtime (libedgetpu1-std, Coral's apt repo)
  --faces          also install the face detectors that privacy.faces (face redaction) uses
  --no-start       install and enable the service, but do not (re)start it now
  --uninstall      remove the code, the service and Coral's apt source; keep /etc/edgecam and
                   /var/lib/edgecam (config, models, undelivered alerts)
  --purge          with --uninstall: also remove /etc/edgecam, /var/lib/edgecam and the user
  -h, --help       this help
EOF
}

say() { printf 'edgecam: %s\n' "$*"; }
warn() { printf 'edgecam: warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$1" >&2
    [ -n "${2:-}" ] && printf '  fix: %s\n' "$2" >&2
    exit 1
}

SOURCE=""
MODELS_FROM=""
WITH_MOSQUITTO=0
WITH_CORAL=0
WITH_FACES=0
START=1
UNINSTALL=0
PURGE=0

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --source) [ $# -ge 2 ] || usage_error "--source needs a path"; SOURCE=$2; shift ;;
            --source=*) SOURCE=${1#*=} ;;
            --models) [ $# -ge 2 ] || usage_error "--models needs a folder"; MODELS_FROM=$2; shift ;;
            --models=*) MODELS_FROM=${1#*=} ;;
            --mosquitto) WITH_MOSQUITTO=1 ;;
            --coral) WITH_CORAL=1 ;;
            --faces) WITH_FACES=1 ;;
            --no-start) START=0 ;;
            --uninstall) UNINSTALL=1 ;;
            --purge) PURGE=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    if [ "$PURGE" -eq 1 ] && [ "$UNINSTALL" -eq 0 ]; then
        usage_error "--purge goes with --uninstall"
    fi
}

usage_error() {
    printf 'error: %s\n' "$1" >&2
    usage >&2
    exit 2
}

# -- system ------------------------------------------------------------------------------------
check_system() {
    [ "$(id -u)" -eq 0 ] || die "install.sh must run as root" "sudo $0 ..."
    command -v apt-get >/dev/null 2>&1 ||
        die "this system has no apt-get" "install.sh supports Raspberry Pi OS and Debian (Bookworm, Trixie)"
    local codename="" arch
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    fi
    case "$codename" in
        bookworm | trixie) ;;
        *) warn "tested on Debian / Raspberry Pi OS bookworm and trixie; this is '${codename:-unknown}'" ;;
    esac
    arch=$(dpkg --print-architecture)
    case "$arch" in
        arm64 | amd64) ;;
        armhf | armel)
            die "32-bit Arm ($arch) is not supported: LiteRT has no wheels for it" \
                "install the 64-bit Raspberry Pi OS (arm64) on a Pi 3, 4, 5 or Zero 2 W" ;;
        *) warn "untested architecture $arch: pip may find no LiteRT wheel for it" ;;
    esac
    say "system: ${codename:-unknown} $arch"
}

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

has_candidate() {
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_update
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_packages() {
    apt_install python3 python3-venv ca-certificates
    python3 - <<'PY' || die "Python 3.10 or newer is needed" "use Raspberry Pi OS / Debian Bookworm or Trixie"
import sys
sys.exit(sys.version_info < (3, 10))
PY
    # picamera2 comes from the Raspberry Pi repository (apt), not from pip
    if is_installed python3-picamera2; then
        :
    elif has_candidate python3-picamera2 || { apt_update && has_candidate python3-picamera2; }; then
        apt_install python3-picamera2
    else
        say "python3-picamera2 is not in this system's apt sources (not Raspberry Pi OS): USB cameras, streams and files still work"
    fi
    if [ "$WITH_MOSQUITTO" -eq 1 ]; then
        apt_install mosquitto
    fi
}

install_coral() {
    if is_installed libedgetpu1-std || is_installed libedgetpu1-max; then
        say "Coral Edge TPU runtime: already installed"
        return 0
    fi
    local added=0 why=""
    if [ ! -f "$CORAL_LIST" ]; then
        mkdir -p "$(dirname "$CORAL_KEY")"
        if ! "$VENV/bin/python" - "$CORAL_KEY_URL" "$CORAL_KEY" <<'PY'; then
import sys, urllib.request
url, target = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url, timeout=30) as response:
        data = response.read()
except OSError as exc:
    sys.exit(f"cannot download {url}: {exc}")
with open(target, "wb") as out:
    out.write(data)
PY
            why="Coral's signing key could not be downloaded"
        else
            echo "deb [signed-by=$CORAL_KEY] $CORAL_REPO coral-edgetpu-stable main" >"$CORAL_LIST"
            added=1
            APT_UPDATED=0
        fi
    fi
    if [ -z "$why" ]; then
        if ! apt_update || ! has_candidate libedgetpu1-std; then
            why="Coral's apt repository ($CORAL_REPO) could not be read, or has no libedgetpu1-std for $(dpkg --print-architecture)"
        elif ! apt_install libedgetpu1-std; then
            why="apt-get could not install libedgetpu1-std"
        fi
    fi
    if [ -n "$why" ]; then
        if [ "$added" -eq 1 ]; then  # leave apt as it was, so that `apt-get update` keeps working
            rm -f "$CORAL_LIST" "$CORAL_KEY"
            APT_UPDATED=0
        fi
        warn "the Coral Edge TPU runtime could not be installed: $why."
        warn "edgecam is installed and runs on the CPU. To add the Edge TPU later, install"
        warn "libedgetpu1-std by hand (https://coral.ai/software/#debian-packages) and set"
        warn "inference.edgetpu: true in $ETC/device.yaml (docs/deploy.md#coral-edge-tpu)."
        CORAL_FAILED=1
        return 0
    fi
    if getent group plugdev >/dev/null; then  # the USB Accelerator's udev rule: group plugdev
        usermod -a -G plugdev "$USER_NAME"
    fi
    say "Coral Edge TPU runtime installed (unplug and replug a USB Accelerator once)"
}

create_user() {
    getent group video >/dev/null || groupadd --system video
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        say "creating system user $USER_NAME"
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "edgecam device" "$USER_NAME"
    fi
    usermod -a -G video "$USER_NAME"
}

make_dirs() {
    install -d -m 0755 -o root -g root "$OPT"
    install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
    install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE" "$MODELS"
    install -d -m 0755 -o root -g root "$CACHE"
}

# -- code --------------------------------------------------------------------------------------
make_venv() {
    local cfg=$VENV/pyvenv.cfg
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "" 2>/dev/null &&
        grep -q '^include-system-site-packages *= *true' "$cfg" 2>/dev/null; then
        return 0
    fi
    if [ -e "$VENV" ]; then  # broken (Python upgraded by a release upgrade) or without apt's packages
        say "recreating $VENV"
        rm -rf "$VENV"
    fi
    say "creating $VENV (--system-site-packages)"
    python3 -m venv --system-site-packages "$VENV"
}

# Print the path of a wheel of edgecam built from $SOURCE (a wheel is used as it is). A checkout
# is built from a copy, so that nothing is written into it as root.
build_wheel() {
    local src=${SOURCE:-$CHECKOUT} work
    case "$src" in
        *.whl)
            [ -f "$src" ] || die "$src does not exist" "give --source a wheel file or a checkout folder"
            readlink -f "$src"
            return 0 ;;
    esac
    if [ ! -f "$src/pyproject.toml" ] || [ ! -d "$src/device" ]; then
        die "$src is not an edgecam checkout (no pyproject.toml and device/)" \
            "give --source the checkout folder or a wheel built with 'pip wheel --no-deps .'"
    fi
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    mkdir "$work/src"
    (cd "$src" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md \
        device training conversion) | tar -xf - -C "$work/src"
    "$VENV/bin/pip" wheel --quiet --disable-pip-version-check --no-deps -w "$work/dist" \
        "$work/src" >&2
    ls "$work"/dist/edgecam-*.whl
}

install_code() {
    local wheel
    wheel=$(build_wheel)
    say "installing $(basename "$wheel") with the [device] extra into $VENV"
    local pip=("$VENV/bin/pip" --disable-pip-version-check --no-input)
    # first the code itself (always: the version may be unchanged), then its pinned dependencies
    "${pip[@]}" install --quiet --no-deps --force-reinstall "$wheel"
    "${pip[@]}" install --quiet "edgecam[device] @ file://$wheel"
    rm -rf "$CACHE"/build.*
    "$VENV/bin/edgecam-device" --version >/dev/null ||
        die "the installed edgecam-device does not start" "run $VENV/bin/edgecam-device --version to see why"
    say "$("$VENV/bin/edgecam-device" --version) installed"
}

# -- model, config, service --------------------------------------------------------------------
install_reference_model() {
    if [ -e "$MODELS/current" ]; then
        say "model: $MODELS/current -> $(readlink "$MODELS/current") (kept)"
        return 0
    fi
    local from=() sha12
    if [ -n "$MODELS_FROM" ]; then
        [ -d "$MODELS_FROM" ] || die "--models $MODELS_FROM is not a folder" \
            "give a folder laid out like the test data (coral/mobilenet_v2_1.0_224_quant.tflite, coral/imagenet_labels.txt)"
        from=(--from "$(readlink -f "$MODELS_FROM")")
    fi
    say "reference model: ImageNet MobileNet V2 (uint8) ${MODELS_FROM:+from $MODELS_FROM}"
    sha12=$("$VENV/bin/python" - "$CACHE/reference" "$STATE" "${from[@]}" <<'PY'
"""Fetch the reference model (sha256-checked) into the model store: models/<sha12>/, current."""
import logging, sys
from pathlib import Path

import device.fetch as fetch
from device.classifier import Classifier
from device.config import InferenceConfig, ModelConfig
from device.rollout.store import ModelStore

cache, state = Path(sys.argv[1]), Path(sys.argv[2])
source = Path(sys.argv[4]) if len(sys.argv) > 4 else None
logging.basicConfig(level=logging.WARNING, format="%(message)s")
# the model and its labels only (not the sample clip: a device whose camera is missing must
# say so, not play a street scene)
wanted = ("mobilenet_v2_1.0_224_quant.tflite", "imagenet_labels.txt")
try:
    fetch.fetch(cache, source, assets=[a for a in fetch.ASSETS if a.name in wanted])
    tflite, labels = (cache / name for name in wanted)
    model = ModelConfig(path=str(tflite), labels=str(labels))
    classifier = Classifier.from_config(model, InferenceConfig(threads=1))
except fetch.EdgecamError as exc:
    sys.exit(f"error: {exc}")
# the same store and links that model updates over MQTT use (device.rollout.store)
store = ModelStore(state)
folder = store.import_running(classifier)  # a bundle whose model.json spells out the input
store.promote(folder)
print(folder.name)
PY
    ) || die "the reference model could not be installed (above)" \
        "check the internet connection, or give --models a folder with coral/mobilenet_v2_1.0_224_quant.tflite"
    chown -R "$USER_NAME:$USER_NAME" "$MODELS"
    say "model: $MODELS/current -> $sha12"
}

# The face detectors of privacy.faces, where the config's relative paths find them
# (models/face_detection_*.tflite in the service's working directory).
install_faces() {
    local from=()
    [ -n "$MODELS_FROM" ] && from=(--from "$(readlink -f "$MODELS_FROM")")
    "$VENV/bin/python" - "$MODELS" "${from[@]}" <<'PY' ||
import logging, sys
from pathlib import Path

import device.fetch as fetch

models = Path(sys.argv[1])
source = Path(sys.argv[3]) if len(sys.argv) > 3 else None
logging.basicConfig(level=logging.WARNING, format="%(message)s")
try:
    fetch.fetch(models, source, assets=[a for a in fetch.ASSETS if a.name.startswith("face_")])
except fetch.EdgecamError as exc:
    sys.exit(f"error: {exc}")
PY
        die "the face detectors could not be installed (above)" \
            "check the internet connection, or give --models a folder with mediapipe/face_detection_*.tflite"
    chown "$USER_NAME:$USER_NAME" "$MODELS"/face_detection_*.tflite
    say "face detectors: $MODELS/face_detection_*.tflite (set privacy.faces.enabled: true to use them)"
}

install_config() {
    local example=$CHECKOUT/config/device.example.yaml target=$ETC/device.yaml
    if [ ! -f "$target" ]; then
        [ -f "$example" ] || die "$example is missing" "run install.sh from an edgecam checkout"
        # the example's paths are relative to a checkout: point them at the state directory
        sed -e "s|^\(  path: \)models/mobilenet_v2_1.0_224_quant.tflite|\1$MODELS/current|" \
            -e 's|^\(  labels: \)models/imagenet_labels.txt|\1null|' \
            -e "s|: state/|: $STATE/|" \
            -e "s|^\(  state_dir: \)state |\1$STATE |" \
            "$example" >"$target.tmp"
        grep -q "^  path: $MODELS/current" "$target.tmp" ||
            die "could not set model.path in the config made from $example" \
                "copy it to $target by hand and set model.path: $MODELS/current"
        chown root:"$USER_NAME" "$target.tmp"
        chmod 0640 "$target.tmp"
        mv -f "$target.tmp" "$target"
        say "config: $target (from the example; edit cameras and mqtt)"
    else
        say "config: $target (kept)"
    fi
    if [ ! -f "$ETC/env" ]; then
        printf '%s\n' "# secrets for edgecam-device.service (read by systemd; keep mode 0600)" \
            "#EDGECAM_MQTT_USERNAME=" "#EDGECAM_MQTT_PASSWORD=" >"$ETC/env"
        chmod 0600 "$ETC/env"
    fi
}

CONFIG_OK=1
validate_config() {
    # as the service user: it proves the user can read the config and the model too
    if ! (cd "$STATE" && runuser -u "$USER_NAME" -- "$VENV/bin/edgecam-device" validate --config "$ETC/device.yaml"); then
        warn "$ETC/device.yaml does not validate (above): fix it, then run install.sh again"
        CONFIG_OK=0
    fi
}

install_unit() {
    install -m 0644 "$HERE/$UNIT_NAME" "$UNIT"
    if ! command -v systemctl >/dev/null 2>&1; then
        warn "systemctl not found: $UNIT installed, not enabled"
        return 0
    fi
    if [ ! -d /run/systemd/system ]; then  # a chroot or container: enable works offline
        systemctl enable --quiet "$UNIT_NAME"
        say "service: enabled (systemd is not running here, so it was not started)"
        return 0
    fi
    systemctl daemon-reload
    systemctl enable --quiet "$UNIT_NAME"
    if [ "$START" -eq 0 ] || [ "$CONFIG_OK" -eq 0 ]; then
        say "service: enabled, not started (start: systemctl start edgecam-device)"
    else
        systemctl restart "$UNIT_NAME"
        say "service: enabled and (re)started; it is ready once the first frame is classified"
        say "  systemctl status edgecam-device; journalctl -u edgecam-device -f"
    fi
}

# -- uninstall ---------------------------------------------------------------------------------
uninstall() {
    if command -v systemctl >/dev/null 2>&1 && [ -f "$UNIT" ]; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now --quiet "$UNIT_NAME" || true
        else
            systemctl disable --quiet "$UNIT_NAME" || true
        fi
    fi
    rm -f "$UNIT"
    [ -d /run/systemd/system ] && systemctl daemon-reload
    rm -rf "$OPT" "$CACHE"
    rm -f "$CORAL_LIST" "$CORAL_KEY"
    say "removed the service, $OPT, $CACHE and Coral's apt source (if it was added)"
    if [ "$PURGE" -eq 1 ]; then
        rm -rf "$ETC" "$STATE"
        if id "$USER_NAME" >/dev/null 2>&1; then
            userdel "$USER_NAME"
        fi
        say "purged $ETC, $STATE and the user $USER_NAME"
    else
        say "kept $ETC and $STATE (config, models, undelivered alerts); --purge removes them"
    fi
    local left=() pkg
    for pkg in "${OUR_APT_PACKAGES[@]}"; do
        is_installed "$pkg" && left+=("$pkg")
    done
    if [ ${#left[@]} -gt 0 ]; then
        say "apt packages left installed (other software may use them): ${left[*]}"
        say "  remove them with: apt-get remove ${left[*]}"
    fi
}

main() {
    parse_args "$@"
    check_system
    if [ "$UNINSTALL" -eq 1 ]; then
        uninstall
        return 0
    fi
    install_packages
    create_user
    make_dirs
    make_venv
    install_code
    CORAL_FAILED=0
    [ "$WITH_CORAL" -eq 1 ] && install_coral
    install_reference_model
    [ "$WITH_FACES" -eq 1 ] && install_faces
    install_config
    validate_config
    install_unit
    if [ "$CONFIG_OK" -eq 0 ]; then
        die "installed, but $ETC/device.yaml does not validate" "fix it (see above) and run install.sh again"
    fi
    if [ "$CORAL_FAILED" -eq 1 ]; then
        say "done, without the Coral Edge TPU runtime (see the warning above)"
    else
        say "done"
    fi
}

main "$@"
