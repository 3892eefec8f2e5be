"""`make test-pi`: the agent on arm64 Debian 12 under qemu-user, installed from a real bundle.

What a Pi user does, in an emulated Raspberry Pi OS Bookworm base (docs/testing.md):
`edgefleet init` + `edgefleet provision` on the x86 host, the bundle unpacked in the arm64
root and installed by its own install-device.sh (image/chroot mode, offline from a
wheelhouse), the agent started as user ``edgefleet`` against mosquitto on the host's
loopback with the fleet's mutual TLS. For QEMU_CPU=cortex-a72 (Pi 4) and cortex-a76 (Pi 5):
the signed int8 GPR model pushed from x86 goes active, a signed model that crashes the
interpreter is refused and the previous one keeps serving, 40 held-out scans dropped into
the inbox by another user come back exactly once with labels and scores identical to x86.
Then the legacy extra (tflite-runtime 2.14, numpy 1) in the same root: it must predict; its
agreement with LiteRT is reported.

Without root or binfmt it skips (exit 0) with the reason; with CI=true it fails instead.
Run: ``sudo .venv/bin/python tests/pi/pi_check.py`` (or ``make test-pi``); ``--keep`` keeps
the work folder. Caches live in ``${XDG_CACHE_HOME:-~/.cache}/edgefleet``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pi_rootfs as rf
from pi_host import (
    DEVICE,
    N_SCANS,
    Host,
    crashing_model,
    int8_model,
    wheelhouse,
    write_scans,
    x86_reference,
)
from pi_rootfs import Chroot, PiCheckError

SENSOR_USER = "pi"
CPUS = ("cortex-a72", "cortex-a76")
INBOX = "/var/spool/edgefleet/inbox"
LEGACY_VENV = "/opt/edgefleet/legacy-venv"
_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{rf.timed(_T0)}] {text}", flush=True)


# -- the device in the chroot -------------------------------------------------------------


def install(chroot: Chroot, bundle: Path, houses: dict[str, Path]) -> str:
    """Unpack the bundle and run its install-device.sh as root in the chroot (image mode)."""
    chroot.run(["useradd", "--create-home", "--shell", "/bin/bash", SENSOR_USER])
    shutil.copyfile(bundle, chroot.path(f"/root/{bundle.name}"))
    for extra, house in houses.items():
        shutil.copytree(house, chroot.path(f"/root/wheelhouse-{extra}"))
    chroot.run(["tar", "-C", "/root", "-xzf", f"/root/{bundle.name}"])
    script = f"cd /root/edgefleet-{DEVICE} && ./install-device.sh "
    script += f"--wheelhouse /root/wheelhouse-litert --inbox-user {SENSOR_USER}"
    out = chroot.run(["sh", "-c", script], timeout=1800).stdout
    (chroot.root.parent / "install.log").write_text(out)
    for expected in ("image mode", "installed already (no apt-get)", "--no-index"):
        if expected not in out:
            raise PiCheckError(f"install-device.sh output lacks {expected!r}:\n{out[-3000:]}")
    unit = chroot.path("/etc/systemd/system/edgefleet-agent.service").read_text()
    (exec_start,) = (ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    wants = "/etc/systemd/system/multi-user.target.wants/edgefleet-agent.service"
    if not chroot.path(wants).is_symlink():
        raise PiCheckError("image mode did not enable the unit for the first boot")
    _check_inbox_permissions(chroot)
    return exec_start.removeprefix("ExecStart=")


def _check_inbox_permissions(chroot: Chroot) -> None:
    st = chroot.path(INBOX).stat()
    groups = chroot.run(["id", "-nG", SENSOR_USER]).stdout.split()
    if oct(st.st_mode & 0o7777) != "0o2770" or "edgefleet-inbox" not in groups:
        raise PiCheckError(f"inbox mode {oct(st.st_mode)}, {SENSOR_USER}'s groups {groups}")
    peek = subprocess.run(
        chroot.argv(["ls", "/var/lib/edgefleet"], user=SENSOR_USER),
        capture_output=True, text=True, check=False, env=chroot.env(),
    )  # fmt: skip
    if peek.returncode == 0:
        raise PiCheckError(f"{SENSOR_USER} can list the agent's state directory")


class Agent:
    """The installed agent, run as the unit's ExecStart as user edgefleet in the chroot."""

    def __init__(self, chroot: Chroot, exec_start: str, log: Path) -> None:
        cmd = f"cd /var/lib/edgefleet && exec {exec_start}"
        argv = chroot.argv(["sh", "-c", cmd], user="edgefleet")
        env = chroot.env(PYTHONUNBUFFERED="1", HOME="/var/lib/edgefleet")
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=out, env=env, start_new_session=True
            )
        self.log = log

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise PiCheckError(f"the agent exited ({self.proc.returncode}):\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def active_model(chroot: Chroot) -> dict[str, Any]:
    """The agent's active.json (what `edgefleet-agent status` prints as "active"), read from
    the host side: a Python start under emulation costs tens of seconds."""
    pointer = json.loads(chroot.path("/var/lib/edgefleet/active.json").read_text())
    return {key: pointer[key] for key in ("name", "version", "sha256")}


def health_verdicts(log: Path) -> list[str]:
    """The agent's own words on refused updates (e.g. crashed the interpreter (SIGSEGV))."""
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    return [ln["msg"] for ln in lines if "failed at health_check" in ln.get("msg", "")]


def drop_scans(chroot: Chroot, names: list[str]) -> None:
    """The sensor user delivers each scan by rename (write .NAME.tmp, then mv), no sudo."""
    script = 'umask 022; set -e; for f in /home/pi/scans/*; do n=$(basename "$f"); '
    script += f'cp "$f" {INBOX}/."$n".tmp; mv {INBOX}/."$n".tmp {INBOX}/"$n"; done'
    chroot.run(["sh", "-c", script], user=SENSOR_USER)
    if len(names) != N_SCANS:
        raise PiCheckError("wrong number of scans")


def wait_records(host: Host, db: Path, agent: Agent, timeout: float = 600) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        agent.check_alive()
        records = host.records(db) if db.exists() else []
        if len(records) >= N_SCANS:
            time.sleep(5)  # a duplicate would arrive now
            return host.records(db)
        time.sleep(3)
    raise PiCheckError(f"only {len(records)} of {N_SCANS} predictions came back in {timeout} s")


def compare(records: list[dict[str, Any]], ref: dict[str, dict[str, Any]], version: int) -> None:
    """Exactly once per scan, from the good model, with x86's labels and scores."""
    names = [Path(r["source"]).name for r in records]
    if len(records) != N_SCANS or sorted(names) != sorted(ref):
        raise PiCheckError(f"{len(records)} records for {len(set(names))} scans (want 40, once)")
    wrong = []
    for rec, name in zip(records, names, strict=True):
        want = ref[name]
        got = {"label": rec["label"], "score": rec["score"]}
        got["topk"] = [[t["label"], t["score"]] for t in rec["topk"]]
        want = want | {"topk": want["topk"][: len(got["topk"])]}  # the agent's top_k
        if rec["model_version"] != version or got != want or not got["topk"]:
            wrong.append(f"{name}: arm64 {got} v{rec['model_version']}, x86 {want} v{version}")
    if wrong:
        raise PiCheckError(f"{len(wrong)} predictions differ from x86:\n" + "\n".join(wrong[:10]))


def cpu_round(ctx: dict[str, Any], cpu: str) -> dict[str, Any]:
    """Push, refuse a crash, classify 40 scans: one emulated CPU model."""
    chroot, host, work = ctx["chroot"], ctx["host"], ctx["work"]
    chroot.switch_cpu(cpu)
    say(f"{cpu}: qemu gives the guest {rf.auxv_caps(chroot)}")
    db = work / f"predictions-{cpu}.sqlite"
    host.listen(db)
    agent = Agent(chroot, ctx["exec_start"], work / f"agent-{cpu}.log")
    try:
        start = time.monotonic()
        pushed = host.push(ctx["model"], wait=600)
        if pushed.returncode != 0:
            agent.check_alive()
            raise PiCheckError(f"{cpu}: the int8 model did not go active:\n{pushed.stdout[-2000:]}")
        active_s = time.monotonic() - start
        active = active_model(chroot)
        if active["sha256"] != ctx["model_sha"]:
            raise PiCheckError(f"{cpu}: active model is {active}, not the pushed int8 model")
        say(f"{cpu}: int8 model active as v{active['version']} after {active_s:.1f} s (emulated)")
        crashed = host.push(ctx["crash"], wait=600)
        after = active_model(chroot)
        stored = chroot.path(f"/var/lib/edgefleet/models/{ctx['crash_sha']}.tflite")
        if crashed.returncode == 0 or after != active or stored.exists():
            raise PiCheckError(
                f"{cpu}: the crashing model was not refused (push exit {crashed.returncode}, "
                f"active {after}):\n{crashed.stdout[-2000:]}"
            )
        verdicts = health_verdicts(agent.log)
        if not verdicts:  # refused, but not by the health check: another step caught it
            raise PiCheckError(
                f"{cpu}: the crashing model was refused, but not at the health check "
                f"(no 'failed at health_check' in the agent's log):\n{crashed.stdout[-2000:]}"
            )
        say(f"{cpu}: crashing model refused ({'; '.join(verdicts)}); v{after['version']} kept")
        start = time.monotonic()
        drop_scans(chroot, list(ctx["ref"]))
        records = wait_records(host, db, agent)
        compare(records, ctx["ref"], active["version"])
        took = time.monotonic() - start
        say(f"{cpu}: {N_SCANS} predictions back once each in {took:.1f} s, identical to x86")
        return {"cpu": cpu, "active_s": active_s, "predict_s": took}
    finally:
        agent.stop()
        host.stop_listener()


def start_legacy_install(chroot: Chroot) -> subprocess.Popen[bytes]:
    """The device-legacy extra (tflite-runtime 2.14, numpy 1) into its own virtualenv in the
    same root, in the background: the CPU rounds leave the second core mostly idle."""
    script = f"cd /root/edgefleet-{DEVICE} && ./install-device.sh --venv-only {LEGACY_VENV} "
    script += "--legacy --wheelhouse /root/wheelhouse-legacy"
    with (chroot.root.parent / "install-legacy.log").open("wb") as out:
        return subprocess.Popen(
            chroot.argv(["sh", "-c", script]),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=chroot.env(),
            start_new_session=True,
        )


def legacy_round(ctx: dict[str, Any], installing: subprocess.Popen[bytes]) -> str:
    """Wait for the legacy install, classify the 40 files with it, compare with LiteRT."""
    chroot = ctx["chroot"]
    log = chroot.root.parent / "install-legacy.log"
    if installing.wait(timeout=1800) != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise PiCheckError(f"install-device.sh --legacy exited {installing.returncode}:\n{tail}")
    chroot.switch_cpu("cortex-a72")
    argv = [f"{LEGACY_VENV}/bin/edgefleet-agent", "predict", "-m", "/root/model.tflite"]
    argv += ["--backend", "tflite_runtime", "--top-k", "4"]
    argv += [f"/home/pi/scans/{name}" for name in sorted(ctx["ref"])]
    out = chroot.run(argv, timeout=900).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if len(lines) != N_SCANS or any("error" in line for line in lines):
        raise PiCheckError(f"tflite-runtime predicted {len(lines)} of {N_SCANS} files:\n{out}")
    same = sum(ctx["ref"][Path(ln["source"]).name]["label"] == ln["label"] for ln in lines)
    diff = max(abs(ctx["ref"][Path(ln["source"]).name]["score"] - ln["score"]) for ln in lines)
    if same < N_SCANS * 0.9:
        raise PiCheckError(f"tflite-runtime agrees with LiteRT on only {same} of {N_SCANS}")
    return f"{same}/{N_SCANS} labels as LiteRT, largest score difference {diff:.6f}"


def prepare(work: Path) -> dict[str, Any]:
    """Everything made on x86 before the device: root filesystem, wheels, models, answers."""
    tarball, built = rf.cached_rootfs(say)
    say(f"root filesystem: {tarball} ({'built now' if built else 'cached'})")
    houses = {extra: wheelhouse(extra) for extra in ("litert", "legacy")}
    say(f"wheelhouses (aarch64, cp311): {', '.join(str(h) for h in houses.values())}")
    model = int8_model(work)
    crash = crashing_model(model)
    scans = work / "scans"
    truth = write_scans(scans)
    ref = x86_reference(model, scans, sorted(truth))
    right = sum(ref[name]["label"] == label for name, label in truth.items())
    say(f"x86 reference: {N_SCANS} scans through LiteRT here, {right} labelled correctly")
    return {"tarball": tarball, "houses": houses, "model": model, "crash": crash, "ref": ref}


def run_checks(work: Path, chroot_box: list[Chroot], after_install: Path | None) -> None:
    made = prepare(work)
    tarball, houses, model, crash, ref = (
        made[k] for k in ("tarball", "houses", "model", "crash", "ref")
    )
    scans = work / "scans"
    host = Host(work)
    try:
        bundle = host.provision()
        host.start_broker()
        say(f"fleet: `edgefleet init`, `provision {DEVICE}`; mosquitto (mutual TLS) :{host.port}")
        chroot = Chroot.unpack(tarball, work / "rootfs")
        chroot_box.append(chroot)
        chroot.mount("cortex-a72")
        start = time.monotonic()
        installing: subprocess.Popen[bytes] | None = None
        try:
            exec_start = install(chroot, bundle, houses)
            shutil.copytree(scans, chroot.path("/home/pi/scans"))
            chroot.run(["chown", "-R", f"{SENSOR_USER}:{SENSOR_USER}", "/home/pi/scans"])
            shutil.copyfile(model, chroot.path("/root/model.tflite"))
            if after_install is not None:
                shutil.copyfile(after_install, chroot.path("/root/after-install.sh"))
                say(f"running {after_install} in the arm64 root (--after-install)")
                chroot.run(["sh", "/root/after-install.sh"])
            took = time.monotonic() - start
            say(f"installed from the bundle by install-device.sh in {took:.1f} s")
            start = time.monotonic()
            installing = start_legacy_install(chroot)
            ctx = {"chroot": chroot, "host": host, "work": work, "exec_start": exec_start}
            ctx |= {"model": model, "crash": crash, "ref": ref}
            ctx["model_sha"] = hashlib.sha256(model.read_bytes()).hexdigest()
            ctx["crash_sha"] = hashlib.sha256(crash.read_bytes()).hexdigest()
            for cpu in CPUS:
                cpu_round(ctx, cpu)
            agreement = legacy_round(ctx, installing)
            took = time.monotonic() - start
            say(f"legacy (tflite-runtime 2.14, numpy 1): {agreement} ({took:.1f} s after start)")
        finally:
            if installing is not None and installing.poll() is None:
                os.killpg(installing.pid, signal.SIGKILL)
                installing.wait()
            chroot.unmount()
    finally:
        host.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--after-install",
        type=Path,
        metavar="SCRIPT",
        help="run this shell script as root in the arm64 root after the install, e.g. to "
        "check that a breakage on arm64 only makes the run fail",
    )
    args = parser.parse_args()
    ci = os.environ.get("CI", "").lower() == "true"
    try:
        reason = rf.why_not_runnable()
    except PiCheckError as exc:
        reason = str(exc)
    if reason is not None:
        if ci:
            print(f"make test-pi: FAILED: CI=true but this machine cannot run it: {reason}")
            return 1
        print(f"make test-pi: SKIPPED: {reason}. (With CI=true this is a failure.)")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="edgefleet-pi-", dir="/var/tmp"))
    say(f"work folder {work}; binfmt: {'; '.join(rf.binfmt_interpreter())}")
    box: list[Chroot] = []
    failed = True
    try:
        run_checks(work, box, args.after_install)
        failed = False
    except (PiCheckError, subprocess.TimeoutExpired) as exc:
        print(f"make test-pi: FAILED: {exc}\nlogs: {work}", flush=True)
    finally:
        for chroot in box:
            rf.remove_tree(chroot)
        if not failed and not args.keep:
            shutil.rmtree(work)
    if not failed:
        say("make test-pi: passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
