#!/usr/bin/env bash
# System packages edgecam's tests and `make run` use: the Mosquitto MQTT broker.
# Installs with apt when it can (root, or sudo without a password); otherwise prints the command.
set -euo pipefail

if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
cmd="apt-get install -y mosquitto"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "edgecam: Mosquitto is missing and this system has no apt-get." >&2
    echo "  install the 'mosquitto' package with your package manager (tests need it)." >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif sudo -n true 2>/dev/null; then
    sudo="sudo"
else
    echo "edgecam: Mosquitto is missing; install it with:" >&2
    echo "  sudo apt-get update && sudo $cmd" >&2
    exit 0
fi
echo "edgecam: installing Mosquitto ($cmd)"
$sudo apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive $sudo $cmd -qq
# Debian enables a system-wide broker on port 1883; edgecam's tests start their own brokers.
