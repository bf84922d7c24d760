"""Distributed set-up (torchrun, or Slurm / submitit tasks) and the few collectives the engine needs.

Every helper degrades to the single-process answer when no process group is initialized,
so the same trainer code runs under ``python tools/train.py`` and ``torchrun``. Without torchrun's
variables, :func:`env_from_scheduler` derives them from a submitit job (``hydra/launcher=
submitit_slurm`` / ``submitit_local`` with several tasks) or an ``srun`` step, one process per GPU.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_dist_initialized",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "all_gather_object",
    "env_from_scheduler",
]

# torchrun sets all of these; RANK/WORLD_SIZE alone decide whether we are under it.
_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``."""
    m = re.match(r"\s*([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if m is None:
        raise ValueError(f"cannot read the Slurm node list {nodelist!r}; set MASTER_ADDR yourself")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _scheduler_tasks(env: Any) -> tuple[int, int, int, str, str] | None:
    """(rank, world size, local rank, first host, job id) of a submitit job or an srun step."""
    if env.get("SUBMITIT_EXECUTOR"):
        import submitit  # optional: only a job that submitit started has SUBMITIT_EXECUTOR

        job = submitit.JobEnvironment()
        return job.global_rank, job.num_tasks, job.local_rank, job.hostnames[0], str(job.job_id)
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # srun sets the step's; sbatch alone does not
        return (int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)),
                first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")),
                env.get("SLURM_JOB_ID", "0"))
    return None


def env_from_scheduler(env: Any = None) -> bool:
    """Fill torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from a submitit job
    (its JobEnvironment: global rank, number of tasks, local rank, first host) or an srun step
    (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, first host of the node list), so DDP and
    SyncBN start as under torchrun. Nothing changes when RANK is already set (torchrun wins) or no
    scheduler started this process. MASTER_PORT, when unset, is derived from the job id (the same
    on every task). True when the variables were filled."""
    env = os.environ if env is None else env
    if "RANK" in env:
        return False
    tasks = _scheduler_tasks(env)
    if tasks is None:
        return False
    rank, world, local, host, job_id = tasks
    digits = re.sub(r"\D", "", job_id.split("_")[0]) or "0"
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    env.setdefault("MASTER_ADDR", host)
    env.setdefault("MASTER_PORT", str(20000 + int(digits) % 20000))
    return True


def init_distributed(backend: str | None = None, *, timeout: timedelta | None = None) -> DistInfo:
    """Initialize the default process group from torchrun's environment variables (filled from
    Slurm / submitit by :func:`env_from_scheduler` when torchrun did not set them).

    Not under torchrun (no RANK/WORLD_SIZE) or WORLD_SIZE == 1: nothing is initialized and
    the result is rank 0 of 1. ``backend`` None picks NCCL when CUDA is available, else gloo.
    With CUDA, each process is pinned to ``cuda:LOCAL_RANK`` before the group is created
    (NCCL needs it, and it keeps every rank off GPU 0). Calling it twice is harmless.
    """
    env = os.environ
    env_from_scheduler(env)
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistInfo(0, 1, 0, _default_device(0))
    rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                "visible; start torchrun with --nproc-per-node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size <= 1:
        return DistInfo(rank, world_size, local_rank, device)
    if is_dist_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)

    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in env]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with torchrun "
            "(it sets " + ", ".join(_ENV_VARS) + ") or export them yourself"
        )
    backend = backend or ("nccl" if use_cuda else "gloo")
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "rank": rank, "world_size": world_size}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator eagerly; avoids barrier() device guessing
    dist.init_process_group(**kwargs)
    logger.info("process group ready: backend=%s rank=%d/%d device=%s", backend, rank, world_size, device)
    return DistInfo(rank, world_size, local_rank, device)


def get_rank() -> int:
    return dist.get_rank() if is_dist_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_object(obj: Any) -> list[Any]:
    """Picklable ``obj`` from every rank, indexed by rank (``[obj]`` when not distributed)."""
    if not is_dist_initialized() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
