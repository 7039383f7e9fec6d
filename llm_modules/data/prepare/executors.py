"""datatrove executors for the three stages: local processes, a Slurm job array, a Ray cluster.

Same pipelines, same work folder, same output whatever runs them (``steps``). What is ours here:

- datatrove prints every task's log to the console; a preparation prints its own progress and keeps
  the task logs under ``.prepare-state/logs/STAGE/logs`` (:class:`_QuietTasks`).
- Slurm: datatrove's executor pickles itself into a file that each job unpickles. We never unpickle,
  so each array task instead runs ``python -m llm_modules.data.prepare.slurm_task OUT STAGE``, which
  rebuilds the stage from the work folder's plain JSON (:class:`SlurmStage`); the stages are chained
  with ``--dependency=afterok``, and a last one-task job writes the report and the manifest.
- Ray: datatrove's executor reports failed tasks in its log and returns; the driver then finds the
  ranks without a completion record and says so (``pipeline``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from llm_modules.data.prepare.steps import CommitUnits, DocumentStages, ReadUnits, SelectDocuments, WriteShards
from llm_modules.data.prepare.work import Work
from llm_modules.registry import ConfigError

STAGES = ("process", "select", "write")


def pipeline(stage: str, out: str, stop_after: int | None = None) -> list:
    if stage == "process":
        return [ReadUnits(out), DocumentStages(out), CommitUnits(out, stop_after)]
    return [SelectDocuments(out)] if stage == "select" else [WriteShards(out)]


def stage_tasks(work: Work, stage: str, shards: int = 0) -> int:
    """Tasks of a stage: ``executor.tasks`` (default 4 per worker) for the per-document stage, capped
    at one per unit; one for select; one per shard, at most ``workers``, for write."""
    config = work.config
    if stage == "select":
        return 1
    if stage == "write":
        return max(1, min(shards, config.workers))
    wanted = config.executor.tasks or 4 * config.workers
    return max(1, min(wanted, len(work.units)))


def logging_dir(work: Work, stage: str, tasks: int) -> str:
    """Per stage and task count: completion records of rank r mean "units r, r+T, ..." only for one T."""
    return str(work.logs(f"{stage}-{tasks}"))


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _QuietTasks:
    """Sends what datatrove logs during a task to the task's log file only: datatrove attaches its
    console handler to ``sys.stderr`` as the task starts, here a sink that discards. The driver keeps
    datatrove quiet otherwise (``quiet_datatrove``)."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        from loguru import logger

        logger.enable("datatrove")
        try:
            with contextlib.redirect_stderr(_Discard()):
                return super()._run_for_rank(rank, local_rank, node_rank)
        finally:
            logger.remove()  # the task's handlers; its log file was closed by datatrove
            logger.disable("datatrove")


@contextlib.contextmanager
def quiet_datatrove():
    """No datatrove messages on the console while the stages run (the tasks keep their log files)."""
    from loguru import logger

    logger.disable("datatrove")
    try:
        yield
    finally:
        logger.enable("datatrove")


def local_stage(work: Work, stage: str, tasks: int, stop_after: int | None = None):
    from datatrove.executor.local import LocalPipelineExecutor

    class LocalStage(_QuietTasks, LocalPipelineExecutor):
        pass

    # spawn, never fork: a fork of a process whose other threads hold locks (torch's thread pools, a
    # test runner's) can leave the child waiting forever on a lock nobody releases
    return LocalStage(pipeline(stage, str(work.out), stop_after), tasks=tasks,
                      workers=min(work.config.workers, tasks), logging_dir=logging_dir(work, stage, tasks),
                      start_method="spawn")


def ray_stage(work: Work, stage: str, tasks: int):
    from datatrove.executor.ray import RayPipelineExecutor

    class RayStage(_QuietTasks, RayPipelineExecutor):
        pass

    ray = work.config.executor.ray
    return RayStage(pipeline(stage, str(work.out)), tasks=tasks, workers=min(work.config.workers, tasks),
                    logging_dir=logging_dir(work, stage, tasks), cpus_per_task=ray.cpus_per_task,
                    mem_per_cpu_gb=ray.mem_per_cpu_gb)


def connect_ray(address: str | None) -> bool:
    """Connect to the Ray cluster at ``address`` (None: ``RAY_ADDRESS`` or a local Ray); True when this
    call connected (so the caller disconnects)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("executor.kind=ray needs Ray: pip install 'llm-modules[ray]' (or pip install ray); "
                          "or use --executor local") from None
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as err:
        raise ConfigError(f"executor.ray.address: cannot reach a Ray cluster at {address!r} ({err}); start one "
                          "with 'ray start --head' and pass its address (--ray-address HOST:6379)") from None
    return True


def _check_reachable(address: str | None) -> None:
    """Ray waits minutes for a cluster that is not there; a plain HOST:PORT is tried first, for 5 s."""
    if not address or "://" in address or address == "auto" or ":" not in address:
        return
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as err:
        raise ConfigError(f"executor.ray.address: no Ray cluster answers at {address!r} ({err}); start one with "
                          "'ray start --head' and pass the address it prints (--ray-address HOST:6379)") from None


# ---- Slurm ------------------------------------------------------------------------------------------------


def slurm_stage(work: Work, stage: str, tasks: int):
    from datatrove.executor.slurm import SlurmPipelineExecutor

    class SlurmStage(_QuietTasks, SlurmPipelineExecutor):
        """A stage as a job array whose tasks rebuild it from the work folder (no pickle)."""

        def get_distributed_env(self, node_rank: int = -1):
            # datatrove asks scontrol to expand the node list; one node per task needs no list
            env = {"datatrove_node_ips": os.environ.get("SLURMD_NODENAME", "localhost"),
                   "datatrove_cpus_per_task": str(self.cpus_per_task),
                   "datatrove_mem_per_cpu": str(self.mem_per_cpu_gb), "datatrove_gpus_on_node": "0",
                   "datatrove_executor": "SLURM"}
            return env

        def submission_script(self, ranks: list[int], after: str | None) -> str:
            args = {k: v for k, v in self.get_sbatch_args(len(ranks)).items() if v is not None}
            if after:
                args["dependency"] = f"afterok:{after}"
            return self.get_launch_file_contents(args, _task_command(work, stage))

    s = work.config.executor.slurm
    return SlurmStage(pipeline(stage, str(work.out)), tasks=tasks, time=s.time, partition=s.partition,
                      cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
                      workers=work.config.workers, job_name=f"{s.job_name}-{stage}", env_command=_env_line(work),
                      sbatch_args=dict(s.sbatch_args), logging_dir=logging_dir(work, stage, tasks),
                      qos=None, requeue=True, mail_user=None)


def slurm_tasks(work: Work, stage: str) -> int:
    """Tasks of a stage's job array. The write stage is submitted before select has counted the
    shards, so it gets one task per worker; a task with no shard of its own does nothing."""
    return stage_tasks(work, stage, shards=work.config.workers)


def _env_line(work: Work) -> str:
    """The shell line each job runs first: ``executor.slurm.env_command``, else activating this venv."""
    if work.config.executor.slurm.env_command:
        return work.config.executor.slurm.env_command
    venv = os.environ.get("VIRTUAL_ENV")
    return f"source {shlex.quote(str(Path(venv) / 'bin' / 'activate'))}" if venv else ""


def _task_command(work: Work, stage: str) -> str:
    """What a job runs: the stage rebuilt from the work folder by this interpreter (``slurm_task``)."""
    return " ".join(shlex.quote(p) for p in
                    (sys.executable, "-m", "llm_modules.data.prepare.slurm_task", str(work.out), stage))


def submit_slurm(work: Work) -> list[dict]:
    """Write one submission script per stage (and one for the report) under ``.prepare-state/slurm``,
    and submit them chained (unless ``executor.slurm.submit`` is false). Returns what was written and
    the job ids."""
    folder = work.root / "slurm"
    folder.mkdir(exist_ok=True)
    submit = work.config.executor.slurm.submit
    jobs: list[dict] = []
    after = None
    for stage in STAGES:
        executor = slurm_stage(work, stage, slurm_tasks(work, stage))
        ranks = executor.get_incomplete_ranks()
        if not ranks:
            continue
        with executor.logging_dir.open("ranks_to_run.json", "w") as f:  # what each array task reads
            json.dump(ranks, f)
        script = folder / f"{stage}.slurm"
        script.write_text(executor.submission_script(ranks, after), encoding="utf-8")
        job = _sbatch(script) if submit else None
        jobs.append({"stage": stage, "tasks": len(ranks), "script": str(script), "job_id": job})
        after = job
    finish = folder / "finish.slurm"
    finish.write_text(_finish_script(work, after), encoding="utf-8")
    jobs.append({"stage": "finish", "tasks": 1, "script": str(finish), "job_id": _sbatch(finish) if submit else None})
    return jobs


def _finish_script(work: Work, after: str | None) -> str:
    s = work.config.executor.slurm
    lines = ["#!/bin/bash", f"#SBATCH --job-name={s.job_name}-finish", "#SBATCH --cpus-per-task=1",
             f"#SBATCH --time={s.time}", f"#SBATCH --output={work.root / 'slurm' / 'finish-%j.out'}"]
    if s.partition:
        lines.append(f"#SBATCH --partition={s.partition}")
    lines += [f"#SBATCH --{k}={v}" for k, v in s.sbatch_args.items()]
    if after:
        lines.append(f"#SBATCH --dependency=afterok:{after}")
    return "\n".join([*lines, "set -e", _env_line(work), _task_command(work, "finish"), ""])


def _sbatch(script: Path) -> str:
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise ConfigError("executor.kind=slurm: 'sbatch' is not on PATH; run on a Slurm login node, or set "
                          "executor.slurm.submit=false (--no-submit) to only write the scripts") from None
    except subprocess.CalledProcessError as err:
        raise ConfigError(f"executor.kind=slurm: sbatch refused {script}: {err.stderr.strip() or err}") from None
    return out.stdout.strip().split(";")[0]
