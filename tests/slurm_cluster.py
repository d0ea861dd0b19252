"""A real two-node Slurm cluster on this machine, for tests that launch vitc the way users do.

Facts checked on Debian 12's Slurm 22.05 that this rests on: Debian's `slurm-wlm` is built with MULTIPLE_SLURMD, so
two `slurmd -N nodeX` daemons with their own `Port=` make two nodes on 127.0.0.1 (`NodeAddr`,
so no /etc/hosts edit); `proctrack/linuxproc` and `task/none` need no cgroups; munged wants
`/run/munge` owned by the `munge` user. Every daemon runs in the foreground as a child of the
test process and every file lives under one private directory, so stopping is killing our own
children — nothing else on the machine is touched.

Run it by hand with `python tests/slurm_cluster.py` to get a shell-ready cluster for a minute.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from system_packages import apt_get

NODES = ("node1", "node2")
PARTITION = "debug"
# How long munged and the Slurm daemons get to come up (they take about a second).
START_TIMEOUT_S = 60.0


def skip_reason() -> str | None:
    """Why this machine cannot run the cluster, or None when it can (root and apt-get)."""
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (it installs slurm-wlm and starts daemons)"
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        return "the local Slurm cluster needs apt-get to install slurm-wlm and munge"
    return None


def ensure_installed() -> None:
    """`apt-get install slurm-wlm munge` once, only when they are not installed yet."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    apt_get("update", "-qq", check=True)
    apt_get("install", "-y", "-qq", "slurm-wlm", "munge", check=True)


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def slurm_conf(root: Path, ctld_port: int, node_ports: list[int]) -> str:
    """slurm.conf for a controller and two one-CPU nodes, all on 127.0.0.1."""
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(
        f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={host} Port={port} CPUs=1 "
        f"RealMemory=1000 State=UNKNOWN"
        for name, port in zip(NODES, node_ports))
    return f"""\
ClusterName=vitctest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Backfill every second: a released requeued job (StartTime=now+2) starts without a 30 s wait.
SchedulerParameters=bf_interval=1
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Keep finished jobs visible to `scontrol show job` while a test inspects them.
MinJobAge=600
# Seconds between SIGTERM and SIGKILL when a job is cancelled: room for the trainer to save.
KillWait=10
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
{nodes}
PartitionName={PARTITION} Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running cluster: `run` calls a Slurm client command against it."""

    root: Path
    conf: Path
    daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (and for jobs, which inherit it through sbatch)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=check)

    def job(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Reason, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_for(self, what: str, ready: Callable[[], object], timeout: float) -> object:
        """Poll `ready()` until it returns something truthy; fail naming `what` on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"local Slurm cluster: gave up waiting for {what} after {timeout:.0f} s"
                           f"\n{self.diagnostics()}")

    def wait_for_job_end(self, job_id: int | str, timeout: float) -> dict[str, str]:
        """The job's record once squeue no longer lists it: not pending (nor requeued), not
        running, and done completing (every process of it has exited)."""
        self.wait_for(f"job {job_id} to end",
                      lambda: not self.run("squeue", "-h", "-j", str(job_id)).stdout.strip(), timeout)
        return self.job(job_id)

    def release(self, job_id: int | str) -> None:
        """Start a requeued job in 2 s instead of after its ~120 s BeginTime hold.

        Not `now`: slurmd revokes the job's credential when the requeue kills it, and a restart
        within that same second is refused ("Job credential revoked") and the job FAILS.
        """
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now+2")

    def diagnostics(self) -> str:
        logs = sorted([*self.root.glob("*.log"), *self.root.glob("*.out")])
        tails = [f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                 for p in logs]
        sinfo = self.run("sinfo", "-N", "-h", "-o", "%N %T %E", check=False)
        return f"sinfo: {sinfo.stdout.strip()} {sinfo.stderr.strip()}\n" + "\n".join(tails)


def _spawn(cluster: SlurmCluster, argv: list[str], out_name: str, **popen_kw) -> None:
    """Start a daemon in the foreground as our child, its output in `root/out_name`."""
    with open(cluster.root / out_name, "wb") as out:
        cluster.daemons.append(subprocess.Popen(
            argv, env=cluster.env, stdout=out, stderr=subprocess.STDOUT, **popen_kw))


def _munge_works() -> bool:
    cred = subprocess.run(["munge", "-n"], capture_output=True)
    return cred.returncode == 0 and subprocess.run(
        ["unmunge"], input=cred.stdout, capture_output=True).returncode == 0


def _start_munged(cluster: SlurmCluster) -> None:
    """Reuse a working munged, else start one as the `munge` user (it wants /run/munge owned by that user)."""
    if _munge_works():
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    run_dir.chmod(0o755)
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], check=True, user="munge", group="munge")
    _spawn(cluster, ["munged", "--foreground"], "munged.out", user="munge", group="munge")
    cluster.wait_for("munged to answer", _munge_works, START_TIMEOUT_S)


def _nodes_idle(cluster: SlurmCluster) -> bool:
    out = cluster.run("sinfo", "-N", "-h", "-o", "%N %T", check=False).stdout.split()
    states = dict(zip(out[::2], out[1::2]))
    return all(states.get(n) == "idle" for n in NODES)


def _cancel_all_jobs(cluster: SlurmCluster) -> None:
    """Job steps run under slurmstepd, not slurmd: end them before the daemons go away."""
    if not cluster.daemons or cluster.daemons[-1].poll() is not None:
        return
    cluster.run("scancel", "--partition", PARTITION, check=False)
    try:
        cluster.wait_for("every job to end",
                         lambda: not cluster.run("squeue", "-h", check=False).stdout.strip(), 30)
    except TimeoutError:
        pass  # stopping the daemons below is all that is left to do


def _stop(daemons: list[subprocess.Popen]) -> None:
    """SIGTERM our own daemons (newest first), then SIGKILL any that do not leave."""
    for proc in reversed(daemons):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(daemons):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged (if needed), slurmctld and two slurmd; yield once both nodes are idle."""
    ensure_installed()
    for sub in ("state", "spool/node1", "spool/node2"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, *node_ports = _free_ports(1 + len(NODES))
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, ctld_port, node_ports))
    cluster = SlurmCluster(root=root, conf=conf)
    try:
        _start_munged(cluster)
        # -D: stay in the foreground as our child; -i: ignore stale state from an earlier run.
        _spawn(cluster, ["slurmctld", "-D", "-i", "-f", str(conf)], "slurmctld.out")
        for name in NODES:
            _spawn(cluster, ["slurmd", "-D", "-N", name, "-f", str(conf)], f"slurmd-{name}.out")
        cluster.wait_for("both nodes to be idle", lambda: _nodes_idle(cluster), START_TIMEOUT_S)
        yield cluster
    finally:
        _cancel_all_jobs(cluster)
        _stop(cluster.daemons)


if __name__ == "__main__":
    import sys
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the daemons on `kill` too
    with tempfile.TemporaryDirectory(prefix="vitc-slurm-") as tmp, slurm_cluster(Path(tmp)) as c:
        print(f"cluster up: export SLURM_CONF={c.conf}")
        print(c.run("sinfo").stdout)
        time.sleep(float(os.environ.get("HOLD_S", "60")))
