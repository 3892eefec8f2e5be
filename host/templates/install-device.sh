#!/bin/sh
# Turn a Raspberry Pi OS Bookworm (64-bit) machine into an edgefleet field device.
#
# Run it as root from an unpacked bundle (`edgefleet provision` makes one):
#     tar xzf DEVICE.tar.gz && cd edgefleet-DEVICE && sudo ./install-device.sh
#
# It installs python3-venv, creates the system user "edgefleet", a virtualenv in
# /opt/edgefleet/venv with `pip install 'edgefleet[device]'`, the bundle's config,
# certificates and trusted signing keys in /etc/edgefleet, the state directory
# /var/lib/edgefleet, the systemd unit and the Coral USB udev rule, then starts the agent.
#
# Options:
#   --root DIR        write the files under DIR instead of / and only print the system
#                     commands (apt-get, useradd, pip, chown, udevadm, systemctl), which
#                     would change the running machine rather than DIR (run them in the
#                     target, e.g. with chroot, when building an image)
#   --dry-run         change nothing on the running machine: print the system commands;
#                     without --root print the file installs too
#   --bundle DIR      the unpacked bundle (default: the directory holding this script)
#   --package SPEC    what pip installs (default: 'edgefleet[device]'; a wheel path works)
#   --no-start        install but do not enable or start the service
#   -h, --help        this text
set -eu

ROOT=/
DRY_RUN=0
START=1
BUNDLE=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
PACKAGE='edgefleet[device]'
SERVICE_USER=edgefleet

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'
}

die() {
    echo "install-device: error: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --bundle) [ $# -ge 2 ] || die "--bundle needs a directory"; BUNDLE=$2; shift 2 ;;
        --package) [ $# -ge 2 ] || die "--package needs a pip requirement"; PACKAGE=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
done

ROOT=${ROOT%/}
ETC="$ROOT/etc/edgefleet"
OPT="$ROOT/opt/edgefleet"
STATE="$ROOT/var/lib/edgefleet"
UNIT_DIR="$ROOT/etc/systemd/system"
UDEV_DIR="$ROOT/etc/udev/rules.d"

# System commands change the running machine: printed, not run, in a dry run or
# when installing into another root.
sys_run() {
    if [ "$DRY_RUN" -eq 1 ] || [ -n "$ROOT" ]; then
        echo "would run: $*"
    else
        echo "+ $*"
        "$@"
    fi
}

# File placement runs unless this is a dry run against the real root.
fs_run() {
    if [ "$DRY_RUN" -eq 1 ] && [ -z "$ROOT" ]; then
        echo "would run: $*"
    else
        echo "+ $*"
        "$@"
    fi
}

check_bundle() {
    for f in agent.toml ca.crt device.crt device.key edgefleet-agent.service \
        99-coral-edgetpu.rules; do
        [ -f "$BUNDLE/$f" ] || die "bundle file $BUNDLE/$f is missing; unpack the whole bundle"
    done
    [ -d "$BUNDLE/signing-keys" ] || die "bundle has no signing-keys/ directory"
}

check_platform() {
    if [ "$(id -u)" -ne 0 ] && [ "$DRY_RUN" -eq 0 ] && [ -z "$ROOT" ]; then
        die "run as root (sudo ./install-device.sh), or use --dry-run / --root DIR"
    fi
    arch=$(uname -m)
    [ "$arch" = aarch64 ] || echo "warning: this is $arch; edgefleet targets 64-bit Raspberry Pi OS (aarch64)" >&2
    if [ -r /etc/os-release ]; then
        codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
        [ "$codename" = bookworm ] || echo "warning: tested on Bookworm, this is '${codename:-unknown}'" >&2
    fi
}

install_packages() {
    sys_run apt-get update
    sys_run apt-get install -y --no-install-recommends python3-venv python3-pip ca-certificates
}

create_user() {
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        echo "user $SERVICE_USER exists"
    else
        sys_run useradd --system --user-group --home-dir /var/lib/edgefleet \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    sys_run usermod -a -G plugdev "$SERVICE_USER"
}

create_venv() {
    sys_run python3 -m venv "$OPT/venv"
    sys_run "$OPT/venv/bin/pip" install --upgrade pip
    sys_run "$OPT/venv/bin/pip" install "$PACKAGE"
}

install_config() {
    fs_run install -d -m 0755 "$ETC"
    fs_run install -d -m 0755 "$ETC/signing-keys"
    fs_run install -m 0644 "$BUNDLE/agent.toml" "$BUNDLE/ca.crt" "$BUNDLE/device.crt" "$ETC/"
    # The device key is readable by root and the service group only.
    fs_run install -m 0640 "$BUNDLE/device.key" "$ETC/device.key"
    for key in "$BUNDLE"/signing-keys/*.pub; do
        [ -e "$key" ] || die "bundle has no trusted signing keys in signing-keys/"
        fs_run install -m 0644 "$key" "$ETC/signing-keys/"
    done
    sys_run chown "root:$SERVICE_USER" "$ETC/device.key"
    fs_run install -d -m 0750 "$STATE" "$STATE/inbox"
    sys_run chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE"
}

install_units() {
    fs_run install -d -m 0755 "$UNIT_DIR" "$UDEV_DIR"
    fs_run install -m 0644 "$BUNDLE/edgefleet-agent.service" "$UNIT_DIR/"
    fs_run install -m 0644 "$BUNDLE/99-coral-edgetpu.rules" "$UDEV_DIR/"
    sys_run udevadm control --reload-rules
    sys_run udevadm trigger --subsystem-match=usb
    sys_run systemctl daemon-reload
    if [ "$START" -eq 1 ]; then
        sys_run systemctl enable --now edgefleet-agent.service
    fi
}

check_bundle
check_platform
install_packages
create_user
create_venv
install_config
install_units
echo "edgefleet agent installed (config: ${ETC}/agent.toml, state: ${STATE})."
echo "Status: systemctl status edgefleet-agent; logs: journalctl -u edgefleet-agent -f"
