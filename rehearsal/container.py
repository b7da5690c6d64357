"""Throwaway servers: a Debian 12 root booted by systemd-nspawn with systemd as PID 1.

Each server is an overlay over the cached root (so its disk survives a reboot and nothing
touches the cache), in a network namespace the rehearsal made, joined to the rehearsal's own
bridge by a veth pair. Traffic goes only between the host's bridge address and these namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from rehearsal.packages import HIDDEN_SUFFIX, PACKAGES

STANDINS = Path(__file__).parent / "standins"
BRIDGE = "rh-br0"
SUBNET = ipaddress.ip_network("10.213.0.0/24")
HOST_ADDRESS = str(SUBNET.network_address + 1)


class RehearsalError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RehearsalError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip()}")
    return result


def _subnet_is_free() -> None:
    for line in json.loads(sh("ip", "-j", "route").stdout or "[]"):
        dst = line.get("dst")
        if dst in (None, "default") or line.get("dev") == BRIDGE:
            continue
        if ipaddress.ip_network(dst, strict=False).overlaps(SUBNET):
            raise RehearsalError(f"this machine already routes {dst}, which overlaps the rehearsal's {SUBNET}")


def bridge_up() -> None:
    _subnet_is_free()
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    if HOST_ADDRESS not in sh("ip", "-br", "addr", "show", BRIDGE).stdout:
        sh("ip", "addr", "add", f"{HOST_ADDRESS}/{SUBNET.prefixlen}", "dev", BRIDGE)
    # Where br_netfilter is loaded (Docker), bridged traffic would pass the host's iptables FORWARD
    # policy: keep the rehearsal's own bridge out of it (the security groups are enforced per server).
    sh("ip", "link", "set", BRIDGE, "type", "bridge", "nf_call_iptables", "0", check=False)
    sh("ip", "link", "set", BRIDGE, "up")


def bridge_down() -> None:
    sh("ip", "link", "del", BRIDGE, check=False)


class Container:
    """One server: `boot()`, `run(...)` inside it, `poweroff()`, `boot()` again (a reboot)."""

    def __init__(self, name: str, *, root: Path, state_dir: Path, index: int,
                 data_volume_mib: int | None = None) -> None:
        self.name = name
        self.root = root
        self.dir = state_dir / name
        self.address = str(SUBNET.network_address + 10 + index)
        self.netns = f"rh-{index}"
        self.veth_host, self.veth_guest = f"rhh{index}", f"rhg{index}"
        self.data_volume_mib = data_volume_mib
        self.loop_device: str | None = None
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        self.boots = 0

    # --- disk and network ------------------------------------------------------------------

    @property
    def merged(self) -> Path:
        return self.dir / "merged"

    @property
    def cfn(self) -> Path:
        """What the stand-ins read (bound at /var/lib/rehearsal-cfn): the endpoint, the instance ID,
        the CDK assets (S3), the package table."""
        return self.dir / "cfn"

    def create(self, wheelhouse: Path) -> None:
        self.destroy()
        for sub in ("upper", "work", "merged", "cfn/assets"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._mount()
        self.wheelhouse = wheelhouse
        if self.data_volume_mib:
            image = self.dir / "ebs-volume.img"
            with image.open("wb") as f:
                f.truncate(self.data_volume_mib * 1024 * 1024)
            self.loop_device = sh("losetup", "-f", "--show", str(image)).stdout.strip()
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_guest)
        sh("ip", "link", "set", self.veth_host, "master", BRIDGE)
        sh("ip", "link", "set", self.veth_host, "up")
        sh("ip", "link", "set", self.veth_guest, "netns", self.netns)
        ns = ("ip", "-n", self.netns)
        sh(*ns, "link", "set", self.veth_guest, "name", "eth0")
        sh(*ns, "addr", "add", f"{self.address}/{SUBNET.prefixlen}", "dev", "eth0")
        sh(*ns, "link", "set", "eth0", "up")
        sh(*ns, "link", "set", "lo", "up")

    def _mount(self) -> None:
        if not os.path.ismount(self.merged):
            sh("mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={STANDINS}:{self.root},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}",
               str(self.merged))

    def prepare_image(self, *, user_data: str | None, hostname: str) -> None:
        """What Amazon Linux 2023's AMI has that the Debian root lacks, and the user data in place."""
        script = f"""set -e
id -u nginx >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/nginx --shell /sbin/nologin nginx
install -d -o nginx -g nginx /var/lib/nginx/tmp
printf '[global]\\nno-index = true\\nfind-links = /opt/rehearsal/wheels\\n' > /etc/pip.conf
echo {hostname} > /etc/hostname
systemctl enable rehearsal-ebs.service rehearsal-fstab.service rehearsal-user-data.service >/dev/null 2>&1
mkdir -p /var/lib/cloud/instance/scripts /var/lib/rehearsal-cfn /opt/rehearsal/wheels
"""
        sh("chroot", str(self.merged), "/bin/bash", "-c", script)
        if user_data is not None:
            self._hide_uninstalled_packages()
            part = self.merged / "var/lib/cloud/instance/scripts/part-001"
            part.write_text(user_data)
            part.chmod(0o700)

    def _hide_uninstalled_packages(self) -> None:
        """A fresh AL2023 instance has none of the table's packages: hide what each provides until
        cfn-init installs it. Debian's python3 is a link to python3.11; make it a binary of its own,
        so `python3` (AL2023's base interpreter) works while python3.11 is not installed."""
        python3 = self.merged / "usr/bin/python3"
        if python3.is_symlink():
            target = python3.resolve()
            python3.unlink()
            shutil.copy2(target, python3)
        for entry in PACKAGES.values():
            for path in entry["provides"]:
                visible = self.merged / path.lstrip("/")
                if visible.exists() or visible.is_symlink():
                    visible.rename(visible.with_name(visible.name + HIDDEN_SUFFIX))
        (self.cfn / "hidden-suffix").write_text(HIDDEN_SUFFIX)

    # --- lifecycle -------------------------------------------------------------------------

    def boot(self) -> float:
        self._mount()
        argv = ["systemd-nspawn", "-D", str(self.merged), "-b", "--register=no", "--keep-unit",
                f"--machine={self.name}", f"--network-namespace-path=/run/netns/{self.netns}",
                f"--bind={self.cfn}:/var/lib/rehearsal-cfn", f"--bind-ro={self.wheelhouse}:/opt/rehearsal/wheels",
                "--console=read-only"]
        if self.loop_device:
            argv.append(f"--bind={self.loop_device}:/dev/nvme1n1")
        log = (self.dir / f"console-{self.boots}.log").open("w")
        started = time.time()
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.boots += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = sh("pgrep", "-P", str(self.process.pid), check=False).stdout.split()
            if children:
                self.pid = int(children[0])
                if self.run("true", check=False).returncode == 0:
                    return started
            if self.process.poll() is not None:
                raise RehearsalError(f"{self.name}: systemd-nspawn exited {self.process.returncode}; see {log.name}")
            time.sleep(0.2)
        raise RehearsalError(f"{self.name}: no init process after 60 s")

    def run(self, command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """A shell command inside the server's namespaces (not as a unit of its systemd)."""
        return sh("nsenter", "-t", str(self.pid), "-a", "/bin/bash", "-c", command, check=check, timeout=timeout)

    def wait_until_running(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        return state

    def poweroff(self, timeout: float = 60) -> None:
        if not self.process or self.process.poll() is not None:
            return
        self.run("systemctl poweroff", check=False)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Killing systemd-nspawn alone would leave the server's processes running (no machined here
            # to end its scope): SIGKILL its init, which ends every process in its PID namespace.
            self.kill_init()
            self.process.kill()
            self.process.wait(10)
        self.pid = None

    def kill_init(self) -> None:
        if self.pid:
            subprocess.run(["kill", "-9", str(self.pid)], check=False, capture_output=True)

    def destroy(self) -> None:
        if self.process and self.process.poll() is None:
            self.poweroff(30)
        sh("ip", "link", "del", self.veth_host, check=False)
        sh("ip", "netns", "del", self.netns, check=False)
        if self.dir.exists() and os.path.ismount(self.merged):
            sh("umount", str(self.merged), check=False)
        if self.loop_device:
            sh("losetup", "-d", self.loop_device, check=False)
            self.loop_device = None
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


def clean_leftovers(state_dir: Path) -> list[str]:
    """Whatever an interrupted rehearsal left: its containers, namespaces, mounts, loop devices.

    Only what carries the rehearsal's own names is touched (machines under state_dir, netns rh-*,
    veths rhh*, the bridge)."""
    removed = []
    for line in sh("pgrep", "-af", "systemd-nspawn", check=False).stdout.splitlines():
        pid, _, command = line.partition(" ")
        if f"-D {state_dir}/" in command:
            # Its init first (ending the whole PID namespace), then systemd-nspawn itself.
            for init in sh("pgrep", "-P", pid, check=False).stdout.split():
                subprocess.run(["kill", "-9", init], check=False)
            subprocess.run(["kill", pid], check=False)
            removed.append(f"container {command.split('--machine=')[1].split()[0]}")
    time.sleep(1 if removed else 0)
    for netns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = netns.split(" ")[0]
        if name.startswith("rh-"):
            sh("ip", "netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for link in json.loads(sh("ip", "-j", "link", check=False).stdout or "[]"):
        if link["ifname"].startswith("rhh"):
            sh("ip", "link", "del", link["ifname"], check=False)
    if state_dir.exists():
        for merged in state_dir.glob("*/merged"):
            if os.path.ismount(merged):
                sh("umount", "-l", str(merged), check=False)
                removed.append(f"mount {merged.parent.name}")
        for line in sh("losetup", "-a", check=False).stdout.splitlines():
            if str(state_dir) in line:
                sh("losetup", "-d", line.split(":")[0], check=False)
                removed.append(f"loop {line.split(':')[0]}")
        shutil.rmtree(state_dir, ignore_errors=True)
    bridge_down()
    return removed
