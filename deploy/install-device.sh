#!/bin/sh
# Turn a Raspberry Pi OS Bookworm (64-bit) machine into an edgefleet field device.
#
# Run it as root from an unpacked bundle (`edgefleet provision` makes one):
#     tar xzf DEVICE.tar.gz && cd edgefleet-DEVICE && sudo ./install-device.sh
#
# It installs python3-venv, creates the system user "edgefleet", a virtualenv in
# /opt/edgefleet/venv with the agent from the bundle's wheels/ (edgefleet-device[litert]
# and edgefleet-shared; their dependencies come from the package index, or from a
# wheelhouse), the bundle's config, certificates and trusted signing keys in /etc/edgefleet,
# the state directory /var/lib/edgefleet, the inbox /var/spool/edgefleet/inbox, the systemd
# unit and the Coral USB udev rule, then starts the agent.
#
# The inbox is where sensors drop scans: it belongs to the group "edgefleet-inbox" and is
# setgid (mode 2770), so any member (the agent, a sensor process, the pi user) can drop
# files without sudo. Add a user with --inbox-user or later: sudo usermod -aG edgefleet-inbox USER
#
# Options:
#   --wheelhouse DIR  install offline: dependencies only from DIR (made on the host with
#                     `edgefleet wheelhouse DIR`), never from the package index
#   --legacy          tflite-runtime 2.14 and numpy 1 instead of LiteRT (edgefleet-device[legacy])
#   --image           image-building mode, for a chroot or an image that is not running:
#                     skip udevadm and systemctl, enable the service for the first boot with
#                     a symlink. Chosen automatically when the machine was not booted with
#                     systemd (no /run/systemd/system).
#   --root DIR        write the files under DIR instead of / and only print the system
#                     commands (apt-get, useradd, pip, chown, udevadm, systemctl), which
#                     would change the running machine rather than DIR (run them in the
#                     target, e.g. with chroot, when building an image)
#   --dry-run         change nothing on the running machine: print the system commands;
#                     without --root print the file installs too
#   --venv-only DIR   only create a virtualenv in DIR with the agent (no apt, user, config
#                     or service; root not needed), e.g. to try the agent or for tests
#   --python PY       the Python that creates the virtualenv (default: python3)
#   --bundle DIR      the unpacked bundle (default: the directory holding this script)
#   --package SPEC    install this pip requirement instead of the bundle's wheels
#   --inbox-user USER also add USER (e.g. pi, or a sensor service's user) to the group
#                     edgefleet-inbox (repeatable; the user must exist)
#   --no-start        install but do not enable or start the service
#   -h, --help        this text
set -eu

ROOT=/
DRY_RUN=0
START=1
BUNDLE=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
PACKAGE=''
EXTRA=litert
WHEELHOUSE=''
IMAGE=0
VENV=''
VENV_ONLY=0
PYTHON=python3
SERVICE_USER=edgefleet
INBOX_GROUP=edgefleet-inbox
INBOX_USERS=''
# Where a systemd-booted machine has its runtime directory (sd_booted(3)); tests override it.
SYSTEMD_RUNDIR=${EDGEFLEET_SYSTEMD_RUNDIR:-/run/systemd/system}

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'
}

die() {
    echo "install-device: error: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
        --legacy) EXTRA=legacy; shift ;;
        --image) IMAGE=1; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --venv-only) [ $# -ge 2 ] || die "--venv-only needs a directory"; VENV=$2; VENV_ONLY=1; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        --bundle) [ $# -ge 2 ] || die "--bundle needs a directory"; BUNDLE=$2; shift 2 ;;
        --package) [ $# -ge 2 ] || die "--package needs a pip requirement"; PACKAGE=$2; shift 2 ;;
        --inbox-user) [ $# -ge 2 ] || die "--inbox-user needs a user name"; INBOX_USERS="$INBOX_USERS $2"; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
done

ROOT=${ROOT%/}
ETC="$ROOT/etc/edgefleet"
OPT="$ROOT/opt/edgefleet"
STATE="$ROOT/var/lib/edgefleet"
INBOX="$ROOT/var/spool/edgefleet/inbox"
UNIT_DIR="$ROOT/etc/systemd/system"
UDEV_DIR="$ROOT/etc/udev/rules.d"
VENV=${VENV:-"$OPT/venv"}

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

# The one wheel of distribution $1 (file name prefix) in the bundle's wheels/.
bundle_wheel() {
    found=''
    for wheel in "$BUNDLE"/wheels/"$1"-*.whl; do
        [ -e "$wheel" ] || die "bundle has no $1 wheel in $BUNDLE/wheels; unpack the whole bundle (made by edgefleet provision) or pass --package"
        [ -z "$found" ] || die "bundle has more than one $1 wheel in $BUNDLE/wheels; keep the one of this bundle"
        found=$wheel
    done
    echo "$found"
}

# Everything is checked before the first change, so a bad bundle or option changes nothing.
check_bundle() {
    if [ "$VENV_ONLY" -eq 0 ]; then
        for f in agent.toml ca.crt device.crt device.key edgefleet-agent.service \
            99-coral-edgetpu.rules; do
            [ -f "$BUNDLE/$f" ] || die "bundle file $BUNDLE/$f is missing; unpack the whole bundle"
        done
        [ -d "$BUNDLE/signing-keys" ] || die "bundle has no signing-keys/ directory"
    fi
    if [ -z "$PACKAGE" ]; then
        DEVICE_WHEEL=$(bundle_wheel edgefleet_device)
        SHARED_WHEEL=$(bundle_wheel edgefleet_shared)
    fi
    if [ -n "$WHEELHOUSE" ]; then
        [ -d "$WHEELHOUSE" ] || die "wheelhouse $WHEELHOUSE is not a directory (fill it on the host: edgefleet wheelhouse DIR)"
        WHEELHOUSE=$(CDPATH='' cd -- "$WHEELHOUSE" && pwd)
    fi
}

check_inbox_users() {
    # Users of another root (--root) or of a dry run are not this machine's to check.
    [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ] || return 0
    for user in $INBOX_USERS; do
        id "$user" >/dev/null 2>&1 || die "--inbox-user $user: no such user; create it first (adduser $user) or add it later with usermod -aG $INBOX_GROUP $user"
    done
}

check_platform() {
    if [ "$(id -u)" -ne 0 ] && [ "$DRY_RUN" -eq 0 ] && [ -z "$ROOT" ] && [ "$VENV_ONLY" -eq 0 ]; then
        die "run as root (sudo ./install-device.sh), or use --dry-run / --root DIR / --venv-only DIR"
    fi
    arch=$(uname -m)
    [ "$arch" = aarch64 ] || echo "warning: this is $arch; edgefleet targets 64-bit Raspberry Pi OS (aarch64)" >&2
    if [ -r /etc/os-release ]; then
        codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
        [ "$codename" = bookworm ] || echo "warning: tested on Bookworm, this is '${codename:-unknown}'" >&2
    fi
}

choose_mode() {
    [ "$VENV_ONLY" -eq 1 ] && return 0
    if [ "$IMAGE" -eq 0 ] && [ ! -d "$SYSTEMD_RUNDIR" ]; then
        IMAGE=1
        echo "install-device: this system was not booted with systemd ($SYSTEMD_RUNDIR is missing): image mode"
    fi
    if [ "$IMAGE" -eq 1 ]; then
        echo "install-device: image mode: udevadm and systemctl are skipped; the service is enabled for the first boot"
    fi
}

SYSTEM_PACKAGES='python3-venv python3-pip ca-certificates'

# True when every system package is installed already (no package index needed, e.g. offline).
packages_installed() {
    # shellcheck disable=SC2016,SC2086 # a dpkg-query format; the list splits into names
    n=$(dpkg-query -W -f='${db:Status-Status}\n' $SYSTEM_PACKAGES 2>/dev/null | grep -c '^installed$')
    [ "$n" -eq 3 ]
}

install_packages() {
    if [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ] && packages_installed; then
        echo "$SYSTEM_PACKAGES: installed already (no apt-get)"
        return 0
    fi
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
    # The inbox group: the agent and every user that drops inputs (see the top of this file).
    if getent group "$INBOX_GROUP" >/dev/null 2>&1; then
        echo "group $INBOX_GROUP exists"
    else
        sys_run groupadd --system "$INBOX_GROUP"
    fi
    sys_run usermod -a -G "$INBOX_GROUP" "$SERVICE_USER"
    for user in $INBOX_USERS; do
        sys_run usermod -a -G "$INBOX_GROUP" "$user"
    done
}

create_venv() {
    if [ -n "$PACKAGE" ]; then
        set -- "$PACKAGE"
    else
        # Both wheels by path: the agent of this bundle, never a same-named index package.
        set -- "${DEVICE_WHEEL}[$EXTRA]" "$SHARED_WHEEL"
    fi
    sys_run "$PYTHON" -m venv "$VENV"
    if [ -n "$WHEELHOUSE" ]; then
        # Offline: the wheelhouse and the bundle's wheels are the only sources.
        sys_run "$VENV/bin/pip" install --no-index --find-links "$WHEELHOUSE" \
            --find-links "$BUNDLE/wheels" "$@"
    else
        sys_run "$VENV/bin/pip" install --upgrade pip
        sys_run "$VENV/bin/pip" install --find-links "$BUNDLE/wheels" "$@"
    fi
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
    fs_run install -d -m 0750 "$STATE"
    sys_run chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE"
    # Setgid: files dropped by any member get the group, so the agent can read and move them.
    fs_run install -d -m 0755 "$(dirname "$INBOX")"
    fs_run install -d -m 2770 "$INBOX"
    sys_run chown "$SERVICE_USER:$INBOX_GROUP" "$INBOX"
    sys_run chmod 2770 "$INBOX"
}

install_units() {
    fs_run install -d -m 0755 "$UNIT_DIR" "$UDEV_DIR"
    fs_run install -m 0644 "$BUNDLE/edgefleet-agent.service" "$UNIT_DIR/"
    fs_run install -m 0644 "$BUNDLE/99-coral-edgetpu.rules" "$UDEV_DIR/"
    if [ "$IMAGE" -eq 1 ]; then
        enable_for_first_boot
        return 0
    fi
    sys_run udevadm control --reload-rules
    sys_run udevadm trigger --subsystem-match=usb
    sys_run systemctl daemon-reload
    if [ "$START" -eq 1 ]; then
        sys_run systemctl enable --now edgefleet-agent.service
    fi
}

# What `systemctl enable` does for WantedBy=multi-user.target, without a running systemd.
enable_for_first_boot() {
    echo "image mode: skipped udevadm (the rule applies at boot) and systemctl"
    [ "$START" -eq 1 ] || return 0
    fs_run install -d -m 0755 "$UNIT_DIR/multi-user.target.wants"
    fs_run ln -sf /etc/systemd/system/edgefleet-agent.service \
        "$UNIT_DIR/multi-user.target.wants/edgefleet-agent.service"
    echo "image mode: edgefleet-agent.service enabled; it starts when the image boots"
}

check_bundle
check_inbox_users
check_platform
choose_mode
if [ "$VENV_ONLY" -eq 1 ]; then
    create_venv
    echo "edgefleet agent installed in ${VENV} (only the virtualenv: --venv-only)."
    exit 0
fi
install_packages
create_user
create_venv
install_config
install_units
echo "edgefleet agent installed (config: ${ETC}/agent.toml, state: ${STATE}, inbox: ${INBOX}, group $INBOX_GROUP)."
if [ "$IMAGE" -eq 1 ]; then
    echo "It starts when the image boots; then: systemctl status edgefleet-agent"
else
    echo "Status: systemctl status edgefleet-agent; logs: journalctl -u edgefleet-agent -f"
fi
