"""Multi-process (DDP) training: the torchrun launch of the train stage, the process group of each worker, and
the small per-rank helpers the engine uses (:class:`Ddp`).

``base.gpus: N > 1``: the train stage, when not already a torchrun worker, re-executes itself as
``python -m torch.distributed.run --standalone --nproc_per_node=N <script> <same args>`` (:func:`launch`) and exits
with torchrun's status. A user may also start ``torchrun --nproc_per_node=N stages/train.py ...`` directly: inside a
worker ``WORLD_SIZE`` from the environment wins over ``base.gpus`` (a log line says so); ``torchrun`` with one
process still takes the DDP code path (world size 1).

``base.nodes: M > 1``: one copy of the stage runs on each of M nodes (the stage's launcher starts them, e.g.
``base.launcher: srun --ntasks-per-node=1 python``), and each re-executes itself as ``torchrun --nnodes=M
--nproc_per_node=N --rdzv_backend=c10d``: the nodes meet at one endpoint (:func:`rendezvous`: the node srun was
started from when under srun, else ``base.rdzv_endpoint``), and c10d numbers them; global rank 0 (local rank 0 of
torchrun's node 0) alone writes files, so the stage's directory must be one that every node sees (a shared
filesystem, as a SLURM job's submit directory is).

Each worker (:func:`session`) joins a process group: NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU
(``base.device: cpu`` or no GPU: there ``gpus`` means processes, so the DDP path is testable without a GPU), and
uses ``max(1, threads // local processes)`` CPU threads. The engine asks :func:`context` which rank it is; without a
process group it is the single-process run (:data:`SINGLE`), unchanged.

BatchNorm stays per rank (no SyncBatchNorm): it needs CUDA (the gloo path could not test it), per-GPU batches are
normally large enough for their own statistics, and the saved model keeps plain BatchNorm layers. DDP broadcasts
rank 0's buffers before every training forward, and :meth:`Ddp.broadcast_buffers` does so again before validation,
so every rank validates (and rank 0 saves) the same running statistics.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from ..config import BaseConfig, ConfigError
from ..core.runtime import DeviceError
from .train_log import say

#: Environment variables torchrun sets in every worker; either one means "already launched".
WORKER_ENV = ("WORLD_SIZE", "LOCAL_RANK")


def in_worker() -> bool:
    """True inside a torchrun worker (``WORLD_SIZE`` or ``LOCAL_RANK`` set)."""
    return any(name in os.environ for name in WORKER_ENV)


#: torchrun's own default port for c10d; under SLURM the job id shifts it, so two jobs sharing a node do not meet.
RDZV_PORT = 29400


def should_launch(gpus: int, nodes: int = 1) -> bool:
    """``base.gpus > 1`` or ``base.nodes > 1`` and this process is not a torchrun worker yet: :func:`launch` it."""
    return (gpus > 1 or nodes > 1) and not in_worker()


def rendezvous(endpoint: Optional[str], environ: Optional[dict] = None) -> tuple[str, str]:
    """``(host:port, run id)`` where the nodes of a multi-node run meet.

    Under srun (``SLURM_LAUNCH_NODE_IPADDR``: the node srun ran on, the batch host, which is in the allocation):
    that host, the port of ``endpoint`` if it names one, else ``RDZV_PORT`` + job id mod 1000; the run id is the job
    and step, the same on every node. Elsewhere ``endpoint`` (``base.rdzv_endpoint``), which every node is given."""
    environ = os.environ if environ is None else environ
    port = endpoint.rpartition(":")[2] if endpoint and ":" in endpoint else ""
    host = environ.get("SLURM_LAUNCH_NODE_IPADDR")
    if host:
        job = environ.get("SLURM_JOB_ID", "0")
        port = port or str(RDZV_PORT + int(job) % 1000 if job.isdigit() else RDZV_PORT)
        return f"{host}:{port}", f"slurm-{job}-{environ.get('SLURM_STEP_ID', '0')}"
    if not endpoint:
        raise ConfigError("base.nodes > 1 needs base.rdzv_endpoint (host:port of a node every node reaches) when "
                          "the stage is not started by srun")
    return (endpoint if port else f"{endpoint}:{RDZV_PORT}"), "carbench"


def launch_command(nproc: int, argv: Sequence[str], nodes: int = 1, endpoint: Optional[str] = None,
                   run_id: str = "carbench") -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=<nproc> <argv...>`` (this interpreter); with
    ``nodes > 1`` ``--nnodes=<nodes>`` and a c10d rendezvous at ``endpoint`` instead of ``--standalone``."""
    head = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        return [*head, "--standalone", f"--nproc_per_node={nproc}", *argv]
    return [*head, f"--nnodes={nodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}", f"--rdzv_id={run_id}", *argv]


def launch(nproc: int, argv: Optional[Sequence[str]] = None, nodes: int = 1, endpoint: Optional[str] = None) -> int:
    """Run this script (``sys.argv``) again as ``nproc`` torchrun workers (on this node of ``nodes``); returns
    torchrun's exit status. ``endpoint``: ``base.rdzv_endpoint`` (read by :func:`rendezvous` when ``nodes > 1``)."""
    argv = list(sys.argv if argv is None else argv)
    if nodes == 1:
        command = launch_command(nproc, argv)
        say(f"base.gpus is {nproc}: running {nproc} processes under torchrun: {' '.join(command[1:])}")
    else:
        where, run_id = rendezvous(endpoint)
        command = launch_command(nproc, argv, nodes, where, run_id)
        say(f"base.nodes is {nodes}: this node runs {nproc} of {nodes * nproc} processes under torchrun, "
            f"c10d rendezvous at {where}: {' '.join(command[1:])}")
    return subprocess.call(command)


def local_batch_size(batch_size: int, world: int) -> int:
    """Per-rank batch: ``train.batch_size // world``, so the global batch (and the lr's meaning) stays
    ``train.batch_size``; ConfigError when it does not divide."""
    if batch_size % world:
        raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by the number of processes ({world}, "
                          f"base.gpus x base.nodes, or torchrun's WORLD_SIZE): each rank trains on batch_size / processes samples")
    return batch_size // world


# ----------------------------------------------------------------------------- one worker's process group
@contextlib.contextmanager
def session(base: BaseConfig) -> Iterator[None]:
    """Inside a torchrun worker: join the process group (NCCL on ``cuda:LOCAL_RANK``, else gloo on CPU), set this
    rank's CPU threads, and leave the group at the end. Outside a worker (or when a group exists): nothing."""
    if not in_worker() or dist.is_initialized():
        yield
        return
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cuda = base.device != "cpu" and torch.cuda.is_available()
    if not cuda and base.device.startswith("cuda"):
        raise DeviceError(f"base.device is {base.device!r} but torch sees no CUDA device; set it to auto or cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
    threads = max(1, (base.threads or os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)
    dist.init_process_group("nccl" if cuda else "gloo")
    planned = base.gpus * base.nodes
    note = "" if world == planned else f" (WORLD_SIZE from torchrun wins over base.gpus x base.nodes: {planned})"
    if rank == 0:
        say(f"DDP: {world} process(es) from torchrun{note}, {'nccl on cuda:LOCAL_RANK' if cuda else 'gloo on CPU'}, "
            f"{threads} CPU thread(s) each")
    try:
        yield
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- what the engine uses
@dataclass(frozen=True)
class Ddp:
    """This process's place in the run: ``enabled`` (a process group exists: DDP, even with world 1), ``rank``,
    ``world``, and the device (``cuda:LOCAL_RANK`` under NCCL, CPU under gloo; None when not enabled)."""

    enabled: bool = False
    rank: int = 0
    world: int = 1
    device: Optional[torch.device] = None

    @property
    def main(self) -> bool:
        """Rank 0: the only rank that writes files (checkpoint, dvclive, curves, resume state)."""
        return self.rank == 0

    def shard(self, perm: torch.Tensor, even: bool) -> torch.Tensor:
        """This rank's part ``perm[rank::world]`` of an order every rank drew alike; ``even``: truncated to
        ``len(perm) // world`` so every rank runs the same number of steps (DDP hangs otherwise)."""
        if self.world == 1:
            return perm
        part = perm[self.rank::self.world]
        return part[:len(perm) // self.world] if even else part

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (its reducer covers the parameters that require grad now)."""
        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks (in place; itself when not enabled)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) to every rank."""
        if self.enabled and self.world > 1:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not enabled."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first, then the others (e.g. a weights download into a shared cache)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


SINGLE = Ddp()


def context() -> Ddp:
    """:class:`Ddp` of this process: from the initialised process group, else :data:`SINGLE`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if nccl else torch.device("cpu")
    return Ddp(True, dist.get_rank(), dist.get_world_size(), device)
