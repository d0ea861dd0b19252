"""`vitc slurm submit` and `vitc slurm status`: render vitc/resources/slurm/*.sbatch for a run and follow its job.

A run directory (`train.run_dir`) holds everything about a Slurm run: the resolved config it was
submitted with (`config.yaml`), the rendered job script and the ids it was submitted as
(`slurm/`), the job's log (`slurm/<job name>-<job id>.out`, appended to across requeues) and the
trainer's metrics (`metrics.jsonl`). No torch here: `--dry-run` works on a login node in a second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from vitc.config import check_flag, config_to_dict, dump_config, load_config
from vitc.errors import VitcError
from vitc.fileio import atomic_write_text
from vitc.resources import resource
from vitc.schema import Config, SlurmConfig

log = logging.getLogger(__name__)

TEMPLATE_DIR = resource("slurm")
# sbatch --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_MEM = re.compile(r"^\d+[KMGT]?$")  # sbatch --mem: an integer, megabytes unless suffixed


@dataclasses.dataclass
class Submission:
    """What `submit` did: the script it rendered, where it put things, and the job id."""

    script: str
    run_dir: Path
    config_path: Path
    script_path: Path
    job_id: str | None = None  # None for a dry run


def render(template: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` placeholders. Hand-rolled: bash's own `${...}` rules out string.Template
    and str.format, and a template engine is not worth a dependency for a dozen names."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def slurm_seconds(time: str) -> int:
    """sbatch --time text -> seconds ('1-02:00:00' -> 93600, '30' -> 1800)."""
    if not _TIME.match(time):
        raise VitcError(f"slurm.time: expected a Slurm time limit (minutes, H:M:S, D-H:M:S, ...), "
                        f"got {time!r}")
    days, _, clock = time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-H, D-H:M, D-H:M:S
        h, m, s = (parts + [0, 0])[:3]
    else:  # M, M:S, H:M:S
        h, m, s = parts if len(parts) == 3 else ([0] + parts + [0])[:3]
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def check_slurm_config(slurm: SlurmConfig) -> None:
    """Reject an allocation sbatch would refuse or that could not checkpoint before its limit."""
    # the ranges of single keys (nodes >= 1, exit_wait_s >= 1, ...) are the schema's (vitc.schema)
    limit = slurm_seconds(slurm.time)
    if not 0 < slurm.signal_seconds < limit:
        raise VitcError(f"slurm.signal_seconds: the preemption signal must come after the start and "
                        f"before the time limit ({slurm.time} = {limit} s), got {slurm.signal_seconds}")
    if slurm.mem is not None and not _MEM.match(slurm.mem):
        raise VitcError(f"slurm.mem / --mem: expected memory per node like 500G, 64000M or 0 (all), got {slurm.mem!r}")
    for key in ("cpu_bind", "gpu_bind"):
        value = getattr(slurm, key)
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise VitcError(f"slurm.{key}: expected one srun --{key.replace('_', '-')} value like 'cores' "
                            f"or 'single:1', got {value!r}")
    bad = [a for a in slurm.sbatch_args if not a.startswith("--")]
    if bad:
        raise VitcError(f"slurm.sbatch_args: expected long sbatch options like '--exclusive', got {bad}")


def sbatch_options(slurm: SlurmConfig, log_pattern: str) -> str:
    """The `#SBATCH` lines for the allocation: nodes x tasks (one per GPU, or one CPU task)."""
    options = [f"--nodes={slurm.nodes}", f"--ntasks-per-node={slurm.tasks_per_node}",
               f"--cpus-per-task={slurm.cpus_per_task}", f"--time={slurm.time}",
               f"--output={log_pattern}", f"--signal=B:USR1@{slurm.signal_seconds}"]
    if slurm.gpus_per_node:
        options.append(f"--gpus-per-node={slurm.gpus_per_node}")
    options += [f"--mem={slurm.mem}"] * (slurm.mem is not None)
    options += [f"--partition={slurm.partition}"] * bool(slurm.partition)
    options += [f"--account={slurm.account}"] * bool(slurm.account)
    options += slurm.sbatch_args
    return "\n".join(f"#SBATCH {shlex.quote(o)}" for o in options)


def _template(name: str) -> str:
    path = TEMPLATE_DIR / name
    if not path.is_file():
        raise VitcError(f"job template {path} not found: vitc's slurm/ directory must sit beside "
                        f"the vitc package (install the repository with `pip install -e .`)")
    return path.read_text()


def _launch_body(slurm: SlurmConfig, workdir: Path, state_dir: Path) -> str:
    exports = "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in sorted(slurm.env.items()))
    return render(_template("launch.sh"), {
        "workdir": shlex.quote(str(workdir)), "env_exports": exports,
        "exit_wait_s": str(slurm.exit_wait_s), "python": shlex.quote(sys.executable),
        "srun_binding": srun_binding(slurm), "state_dir": shlex.quote(str(state_dir)),
        "node_failure_requeues": str(slurm.node_failure_requeues)})


def srun_binding(slurm: SlurmConfig) -> str:
    """srun's --cpu-bind/--gpu-bind options for the training step ('' for the site's defaults)."""
    options = [f"--{key.replace('_', '-')}={value}" for key in ("cpu_bind", "gpu_bind")
               if (value := getattr(slurm, key)) is not None]
    return "".join(f"{shlex.quote(o)} " for o in options)


def job_name(cfg: Config) -> str:
    return f"vitc-{Path(cfg.train.run_dir).resolve().name}"


def render_job_script(cfg: Config, config_path: Path, workdir: Path) -> str:
    """The sbatch script (vitc/resources/slurm/<slurm.template>.sbatch) that trains `config_path`."""
    check_slurm_config(cfg.slurm)
    log_dir = Path(cfg.train.run_dir).resolve() / "slurm"
    return render(_template(f"{cfg.slurm.template}.sbatch"), {
        "job_name": job_name(cfg), "config": shlex.quote(str(config_path)),
        "sbatch_options": sbatch_options(cfg.slurm, f"{log_dir}/%x-%j.out"),
        "launch_body": _launch_body(cfg.slurm, workdir, log_dir)})


def render_sweep_script(list_path: Path, count: int, slurm: SlurmConfig, name: str,
                        log_dir: Path, parallel: int, workdir: Path) -> str:
    """A job array of `count` runs, one per config path listed (one per line) in `list_path`."""
    check_slurm_config(slurm)
    if count < 1 or parallel < 1:
        raise VitcError(f"sweep: expected at least one config and parallel >= 1, got {count} "
                        f"configs and parallel={parallel}")
    return render(_template("sweep.sbatch"), {
        "job_name": name, "config_list": shlex.quote(str(list_path)),
        "last_index": str(count - 1), "parallel": str(parallel),
        "sbatch_options": sbatch_options(slurm, f"{log_dir}/%x-%A_%a.out"),
        "launch_body": _launch_body(slurm, workdir, log_dir)})


def resolve_submission(config: str | Path, overrides: list[str], **allocation) -> Config:
    """The run's config with CLI allocation flags (nodes=..., time=...; None = keep) applied after
    the overrides; the schema checks each flag as it checks its key in a config."""
    given = {k: v for k, v in allocation.items() if v is not None}
    for key, value in given.items():  # the schema's type and range, as for the key in a config
        check_flag(f"slurm.{key}", value, "--" + key.replace("_", "-"))
    cfg = load_config(config, overrides)
    cfg = dataclasses.replace(cfg, slurm=dataclasses.replace(cfg.slurm, **given))
    check_slurm_config(cfg.slurm)
    return cfg


def submit(cfg: Config, dry_run: bool = False, workdir: Path | None = None) -> Submission:
    """Save the resolved config and the rendered script in the run dir, then `sbatch` it.

    A dry run writes nothing and needs no Slurm: it only renders the script.
    """
    run_dir = Path(cfg.train.run_dir).resolve()
    config_path = run_dir / "config.yaml"
    script_path = run_dir / "slurm" / f"{cfg.slurm.template}.sbatch"
    script = render_job_script(cfg, config_path, (workdir or Path.cwd()).resolve())
    result = Submission(script, run_dir, config_path, script_path)
    if not dry_run:
        _check_same_model(config_path, cfg)
        _require_sbatch()  # before anything is written
        atomic_write_text(config_path, dump_config(cfg))
        atomic_write_text(script_path, script)
        result.job_id = _sbatch(script_path)
    return result


def submit_sweep(config_paths: list[Path], sweep_dir: Path, slurm: SlurmConfig, parallel: int,
                 dry_run: bool = False, workdir: Path | None = None) -> Submission:
    """One job array over `config_paths` (each config names its own train.run_dir); the list,
    the script and the array's logs go to SWEEP_DIR/slurm. A dry run writes nothing."""
    sweep_dir = Path(sweep_dir).resolve()
    list_path = sweep_dir / "slurm" / "configs.txt"
    script_path = sweep_dir / "slurm" / "sweep.sbatch"
    script = render_sweep_script(list_path, len(config_paths), slurm, f"vitc-{sweep_dir.name}",
                                 sweep_dir / "slurm", parallel, (workdir or Path.cwd()).resolve())
    result = Submission(script, sweep_dir, list_path, script_path)
    if not dry_run:
        _require_sbatch()
        atomic_write_text(list_path, "".join(f"{Path(p).resolve()}\n" for p in config_paths))
        atomic_write_text(script_path, script)
        result.job_id = _sbatch(script_path)
    return result


def _require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise VitcError("sbatch not found on PATH: submit from a Slurm login node, or use --dry-run "
                        "to see the job script (nothing was written)")


def _sbatch(script_path: Path) -> str:
    """Submit; record the job id in jobs.txt beside the script (one per line, newest last)."""
    proc = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise VitcError(f"sbatch refused {script_path}: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    with open(script_path.parent / "jobs.txt", "a") as jobs:
        jobs.write(job_id + "\n")
    log.info("submitted job %s (%s)", job_id, script_path)
    return job_id


def _check_same_model(config_path: Path, cfg: Config) -> None:
    """Resubmitting a run dir continues its run: a different model could not load its checkpoints
    (better said now than after a queue wait); other changes are allowed and logged."""
    if not config_path.exists():
        return
    old, new = config_to_dict(load_config(config_path)), config_to_dict(cfg)
    changed = sorted(k for k in new if new[k] != old.get(k) and k != "slurm")
    if "model" in changed:
        raise VitcError(f"{config_path} was written for another model (model: section differs): a "
                        f"run dir continues one run; set train.run_dir to a new directory")
    if changed:
        log.warning("continuing %s with changed config sections: %s", config_path.parent,
                    ", ".join(changed))


@dataclasses.dataclass
class JobStatus:
    """What `vitc slurm status` shows about a run's newest job."""

    run_dir: Path
    job_id: str | None
    state: str = "unknown"  # PENDING, RUNNING, COMPLETED, FAILED, ... as Slurm names them
    requeues: int | None = None
    reason: str = ""
    nodes: str = ""
    elapsed: str = ""
    last_step: int | None = None
    log_file: Path | None = None
    source: str = ""  # which Slurm command answered

    def describe(self) -> str:
        """The lines `vitc slurm status` prints."""
        rows = [("run dir", str(self.run_dir)), ("job", self._job_line()),
                ("requeues", "unknown" if self.requeues is None else str(self.requeues)),
                ("last step", "none logged yet" if self.last_step is None else str(self.last_step)),
                ("log", str(self.log_file) if self.log_file else "none yet")]
        return "\n".join(f"{k + ':':<11}{v}" for k, v in rows)

    def _job_line(self) -> str:
        if self.job_id is None:
            return "never submitted"
        line = f"{self.job_id} {self.state}"
        if self.reason not in ("", "None"):
            line += f" ({self.reason})"
        if self.nodes not in ("", "(null)"):
            line += f" on {self.nodes}"
        if self.elapsed:
            line += f", {self.elapsed} elapsed"
        return line + (f"  [{self.source}]" if self.source else "")


RUN_FILES = ("slurm/jobs.txt", "config.yaml", "metrics.jsonl", "outcome.json")  # one of them: a run directory


def job_status(run_dir: str | Path) -> JobStatus:
    """The newest job submitted for `run_dir`, asked of scontrol, else sacct, else squeue."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise VitcError(f"run dir not found: {run_dir}")
    jobs_file = run_dir / "slurm" / "jobs.txt"
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise VitcError(f"{run_dir} is not a run directory (none of {', '.join(RUN_FILES)}): expected the "
                        "train.run_dir of a config given to `vitc slurm submit`")
    job_ids = jobs_file.read_text().split() if jobs_file.exists() else []
    status = JobStatus(run_dir, job_ids[-1] if job_ids else None, last_step=last_logged_step(run_dir))
    logs = [p for pattern in (f"*-{status.job_id}.out", f"*-{status.job_id}_*.out")  # job, array
            for p in sorted((run_dir / "slurm").glob(pattern))] if status.job_id else []
    status.log_file = logs[-1] if logs else None
    if status.job_id:
        _ask_slurm(status)
    return status


def _ask_slurm(status: JobStatus) -> None:
    for ask in (_from_scontrol, _from_sacct, _from_squeue):
        if ask(status):
            return
    status.reason = "no longer known to Slurm (scontrol, sacct and squeue had no record)"


def _run(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def _from_scontrol(status: JobStatus) -> bool:
    out = _run("scontrol", "show", "job", "-o", status.job_id)
    if out is None:
        return False
    fields = dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0]))
    status.state, status.reason = fields.get("JobState", "unknown"), fields.get("Reason", "")
    status.requeues = int(fields.get("Restarts", fields.get("RestartCnt", "0")) or 0)
    status.nodes, status.elapsed = fields.get("NodeList", ""), fields.get("RunTime", "")
    status.source = "scontrol"
    return True


def _from_sacct(status: JobStatus) -> bool:
    # --duplicates lists every requeued run of the job as its own row, oldest first.
    out = _run("sacct", "-j", status.job_id, "-X", "-n", "-P", "--duplicates",
               "-o", "State,Reason,NodeList,Elapsed")
    if out is None:
        return False
    rows = [line.split("|") for line in out.splitlines()]
    status.state, status.reason, status.nodes, status.elapsed = (rows[-1] + ["", "", "", ""])[:4]
    status.requeues, status.source = len(rows) - 1, "sacct"
    return True


def _from_squeue(status: JobStatus) -> bool:
    out = _run("squeue", "-j", status.job_id, "-h", "-o", "%T|%r|%N|%M")
    if out is None:
        return False
    status.state, status.reason, status.nodes, status.elapsed = (out.split("|") + ["", "", "", ""])[:4]
    status.source = "squeue"
    return True


def last_logged_step(run_dir: Path) -> int | None:
    """The `step` of the last complete line of RUN_DIR/metrics.jsonl (written by the trainer)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:  # the trainer may be writing the last line right now
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            return record["step"]
    return None
