"""A real one-node SLURM cluster on this machine for the tests: munged, slurmctld and slurmd on 127.0.0.1.

Debian's packages (``slurmctld slurmd slurm-client munge``) are installed with apt-get when missing and this is
root; the daemons run from a generated ``slurm.conf`` in a temporary directory (no systemd, free ports, a private
munge socket and key), and :meth:`LocalSlurm.stop` ends exactly the processes it started. Clients find the cluster
through ``SLURM_CONF`` (:meth:`LocalSlurm.env`). Whatever cannot be done raises :class:`Unavailable` with the
reason, which the fixture turns into a skip.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: Debian's packages that provide the daemons and the clients (slurm-wlm is their meta-package).
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "munged", "mungekey")
CPUS = 2


class Unavailable(Exception):
    """SLURM cannot run here (the reason is the message)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)


def ensure_installed() -> dict[str, str]:
    """Paths of :data:`BINARIES`; installs :data:`PACKAGES` with apt-get (root only) when one is missing."""
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
            raise Unavailable(f"SLURM is not installed ({', '.join(missing)} missing) and this is not root with "
                              f"apt-get: install Debian's {' '.join(PACKAGES)} to run the SLURM tests")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            for cmd in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
                subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900, env=env)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            tail = (getattr(exc, "stderr", "") or "")[-500:]
            raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {exc}\n{tail}") from None
        missing = [b for b in BINARIES if not _which(b)]
        if missing:
            raise Unavailable(f"apt-get installed {' '.join(PACKAGES)} but {', '.join(missing)} is missing")
    return {b: _which(b) for b in BINARIES}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb(slurmd: str) -> int:
    """What slurmd itself measures (``slurmd -C``): a node configured with more is drained."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True).stdout
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return int(fields.get("RealMemory", "1024"))


class LocalSlurm:
    """One node (``localhost``, :data:`CPUS` CPUs, partition ``ci``), its state and logs under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.bin = ensure_installed()
        if os.geteuid() != 0:
            raise Unavailable("the local SLURM cluster runs its daemons as root (SlurmdUser=root): not root here")
        if (os.cpu_count() or 1) < CPUS:
            raise Unavailable(f"the local SLURM node has {CPUS} CPUs; this machine has {os.cpu_count()}")
        self.pids: dict[str, Path] = {}

    def env(self, base: dict | None = None) -> dict:
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.is_file() else "(no log)"

    def start(self) -> "LocalSlurm":
        root = self.root
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "munge").chmod(0o755)  # munged wants its socket directory reachable by clients, writable by it only
        key = root / "munge" / "munge.key"
        subprocess.run([self.bin["mungekey"], "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)
        socket_path = root / "munge" / "munge.socket"
        # --force: pytest's temporary directories are private (0700), which munged otherwise refuses for a socket
        self._daemon("munged", [self.bin["munged"], "--force", f"--key-file={key}", f"--socket={socket_path}",
                                f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                                f"--seed-file={root / 'munge' / 'seed'}"], root / "munge" / "munged.pid")
        self.conf.write_text("\n".join([
            "ClusterName=carbenchci", "SlurmctldHost=localhost", f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire: a requeued job may start again that many seconds later (SLURM's default is 120)
            f"AuthInfo=socket={socket_path},cred_expire=10",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            # no cgroups or accounting daemon here: plain process tracking, no task binding, no sacct
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory", "MpiDefault=none", "ReturnToService=2", "KillWait=10",
            "MinJobAge=3600",  # finished jobs stay in `scontrol show job` for the whole test session
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={_real_memory_mb(self.bin['slurmd'])} "
            "State=UNKNOWN",
            "PartitionName=ci Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
        env = self.env()
        self._daemon("slurmctld", [self.bin["slurmctld"], "-i"], root / "slurmctld.pid", env)
        self._daemon("slurmd", [self.bin["slurmd"], "-N", "localhost"], root / "slurmd.pid", env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the node registers with the controller, then takes jobs
            out = subprocess.run([self.bin["scontrol"], "show", "node", "localhost"], capture_output=True,
                                 text=True, env=env).stdout
            if "State=IDLE" in out:
                return self
            time.sleep(0.5)
        self.stop()
        raise Unavailable(f"the local SLURM node did not come up in 60 s:\n{self.log('slurmctld')}\n{self.log('slurmd')}")

    def _daemon(self, name: str, cmd: list[str], pid_file: Path, env: dict | None = None) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        deadline = time.monotonic() + 15
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        if result.returncode != 0 or not pid_file.is_file():
            self.stop()
            raise Unavailable(f"{name} did not start (exit {result.returncode}): {result.stderr.strip()[-500:]}\n"
                              f"{self.log(name)}")
        self.pids[name] = pid_file

    def stop(self) -> None:
        """Shut the controller and node down, then end each daemon this object started, by its pid."""
        if "slurmctld" in self.pids:
            subprocess.run([self.bin["scontrol"], "shutdown"], capture_output=True, env=self.env(), timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.pids.pop(name, None)
            if pid_file is None or not pid_file.is_file():
                continue
            pid = int(pid_file.read_text().split()[0])
            for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline and _alive(pid):
                    time.sleep(0.1)
                if not _alive(pid):
                    break


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a daemon that exited but is not reaped yet (init reaps it) is gone for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split()[2] == "Z")
