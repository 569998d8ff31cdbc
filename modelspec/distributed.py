"""Data-parallel training on torch.distributed: which worker this process is, the process
group, and each worker's share of a global batch.

    group = Group.from_env()            # torchrun's RANK, WORLD_SIZE, LOCAL_RANK; None if unset
    model = ms.build(spec, backend="torch", distributed=True)   # or distributed=group
    model.fit(x, y)                     # the same call, with all of x and y, on every worker

The promise: N workers give the weights and history of one process, up to float summation
order. The spec's batch is the global batch. Every worker draws the same shuffle order from the
same seed and takes its contiguous `shard` of each global batch; each worker's data loss is
weighted by its share of the batch, weight penalties are counted on worker 0 only, and the
gradients (and the per-occurrence squares Keras's optimizers take of an embedding's sparse
gradient) are summed across workers in one all-reduce, so the update is the single-process
mean over the global batch, a partial last batch included. batchnorm normalizes with the
global batch's statistics, and every dropout mask is the global batch's (each worker draws
the whole mask from its identically seeded generator and keeps its rows). The reported loss
and metric sums are the global ones, so every worker takes the same decisions (a non-finite
step, early stopping, a plateau's new rate).

torch is imported inside the functions: `modelspec check` never imports a framework.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ModelspecError

# How long a collective may wait for the other workers before the run ends with an error.
# Between two collectives the workers do the same work, except that worker 0 writes the
# checkpoint at an epoch's end while the others wait in the next step's all-reduce: the
# limit must cover that write (a few seconds for models of a few hundred MB), yet end a run
# whose peer hangs or went away unnoticed within half a minute. (A worker that dies is
# usually noticed sooner: gloo's connection to it closes, and torchrun's agent stops the
# others as soon as one exits.) MODELSPEC_DIST_TIMEOUT (seconds) overrides it.
DEFAULT_TIMEOUT = 30.0
TIMEOUT_ENV = "MODELSPEC_DIST_TIMEOUT"
RENDEZVOUS_TIMEOUT = 300.0  # how long the workers wait for each other to start


class DistributedError(ModelspecError):
    """A distributed run that cannot start or went wrong: malformed launcher variables, a
    backend that cannot train across processes, workers that disagree."""


@dataclass(frozen=True)
class Group:
    """This process's place among the workers of a data-parallel run: its `rank` (0 to
    world_size - 1, across machines), `world_size` and `local_rank` (its index on this
    machine, which picks its GPU)."""

    rank: int
    world_size: int
    local_rank: int

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "local_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise DistributedError(f"Group.{name} must be an integer; received {value!r}")
        if self.world_size < 1:
            raise DistributedError(f"the world size must be at least 1; received {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise DistributedError(f"the rank must be in [0, {self.world_size}) for a world size of "
                                   f"{self.world_size}; received {self.rank}")
        if self.local_rank < 0:
            raise DistributedError(f"the local rank must be at least 0; received {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """Worker 0: the one that prints progress and writes outputs."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Group | None":
        """The group torchrun (torch.distributed.run) describes in RANK, WORLD_SIZE and
        LOCAL_RANK; None when WORLD_SIZE is not set (not launched as a worker). LOCAL_RANK
        defaults to RANK (one machine)."""
        env = os.environ if environ is None else environ
        if env.get("WORLD_SIZE") is None:
            return None

        def integer(name: str, default: str | None = None) -> int:
            text = env.get(name, default)
            if text is None:
                raise DistributedError(f"WORLD_SIZE is set but {name} is not: a worker of a distributed run needs "
                                       "RANK, WORLD_SIZE and LOCAL_RANK, as torchrun sets them")
            try:
                return int(text.strip())
            except ValueError:
                raise DistributedError(f"{name} must be a whole number (as torchrun sets it); received "
                                       f"{text!r}") from None

        world = integer("WORLD_SIZE")
        rank = integer("RANK")
        return cls(rank=rank, world_size=world, local_rank=integer("LOCAL_RANK", str(rank)))


def resolve(distributed: Any) -> "Group | None":
    """`build`'s distributed= option as a group of several workers, or None for one process:
    None or False; True (torchrun's environment, which must be there); a Group. A group of
    one worker is one process: nothing is initialized and nothing changes."""
    if distributed is None or distributed is False:
        return None
    if distributed is True:
        group = Group.from_env()
        if group is None:
            raise DistributedError("distributed=True reads the worker's RANK, WORLD_SIZE and LOCAL_RANK, which "
                                   "are not set: launch it with torchrun (or modelspec train --nproc N), or pass "
                                   "distributed=Group(rank, world_size, local_rank)")
    elif isinstance(distributed, Group):
        group = distributed
    else:
        raise DistributedError(f"distributed must be True, False, None or a modelspec.distributed.Group; "
                               f"received {type(distributed).__name__}")
    return group if group.world_size > 1 else None


def timeout_seconds(timeout: float | None = None) -> float:
    """The collectives' timeout: `timeout`, else MODELSPEC_DIST_TIMEOUT, else DEFAULT_TIMEOUT."""
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV)
        if text is None:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise DistributedError(f"{TIMEOUT_ENV} must be a number of seconds; received {text!r}") from None
    if not timeout > 0:
        raise DistributedError(f"the collective timeout must be a positive number of seconds; received {timeout}")
    return float(timeout)


def init(group: Group, device: Any, timeout: float | None = None) -> None:
    """Join the default process group of torch.distributed, unless this process already has:
    gloo on the CPU, NCCL on CUDA (`device`, each worker's own GPU). The rendezvous is
    torch's env:// (MASTER_ADDR and MASTER_PORT, which torchrun sets). A collective that
    waits longer than `timeout` seconds (see DEFAULT_TIMEOUT) fails, and the run with it."""
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError(f"this torch ({torch.__version__}) was built without torch.distributed")
    device = torch.device(device)
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (group.rank, group.world_size):
            raise DistributedError(f"torch.distributed is initialized as rank {dist.get_rank()} of "
                                   f"{dist.get_world_size()}, but this model's group is rank {group.rank} of "
                                   f"{group.world_size}")
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise DistributedError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: the "
                               "workers meet at MASTER_ADDR:MASTER_PORT (torchrun sets both)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        # torch's env:// rendezvous (torchrun's agent store, or one rank 0 hosts), given longer
        # than a collective: workers that start together may still reach it far apart
        store, _, _ = next(dist.rendezvous("env://", group.rank, group.world_size,
                                           timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT)))
        dist.init_process_group(backend, store=store, rank=group.rank, world_size=group.world_size,
                                timeout=datetime.timedelta(seconds=timeout_seconds(timeout)))
    except (RuntimeError, ValueError) as e:
        from .errors import one_line

        raise DistributedError(f"worker {group.rank} of {group.world_size} could not join the process group "
                               f"({backend}): {one_line(e)}") from None


def shard(n: int, group: Group | None) -> slice:
    """This worker's contiguous share of a global batch of n samples: the batch's rows split
    in order, the first n % world_size workers taking one row more (worker 0 the first rows).
    With more workers than rows, the last ones take none."""
    if group is None:
        return slice(0, n)
    base, extra = divmod(n, group.world_size)
    start = group.rank * base + min(group.rank, extra)
    return slice(start, start + base + (group.rank < extra))


def all_reduce(tensor: Any, op: str = "sum") -> None:
    """torch.distributed.all_reduce of `tensor` in place ("sum" or "max"). A worker that went
    away (its connection closed) or stopped answering (past the timeout) is a DistributedError
    with one line saying so, on every worker that is left."""
    import torch.distributed as dist

    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    except RuntimeError as e:  # (torch's DistBackendError and gloo's errors are RuntimeErrors)
        from .errors import one_line

        rank, world = dist.get_rank(), dist.get_world_size()
        raise DistributedError(f"worker {rank} of {world}: another worker stopped or stopped answering, so the "
                               f"run ends here ({one_line(e)[:300]})") from e


def _device() -> Any:
    """Where this process's collectives take their tensors: its GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def any_worker(flag: bool, group: Group | None) -> bool:
    """Whether `flag` is true on any worker (a collective: every worker calls it). A stop
    requested on one worker (Ctrl-C, Model.stop_training) stops them all after the same epoch."""
    if group is None:
        return bool(flag)
    import torch

    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_device())
    all_reduce(value, "max")
    return bool(value.item())


def agree(settings: dict[str, Any], group: Group | None) -> None:
    """A DistributedError, on every worker, unless every worker passes the same `settings`
    (values, or bytes of data) — a collective: every worker calls it."""
    if group is None:
        return
    import hashlib

    import torch

    mine = [int.from_bytes(hashlib.sha256(v if isinstance(v, bytes) else repr(v).encode()).digest()[:7], "big")
            for v in settings.values()]
    # the largest of each value and of its negation: both are this worker's own only if all agree
    seen = torch.tensor([[v, -v] for v in mine], dtype=torch.int64, device=_device())
    all_reduce(seen, "max")
    differ = [name for name, v, (high, low) in zip(settings, mine, seen.tolist()) if (high, -low) != (v, v)]
    if differ:
        raise DistributedError(f"the workers called fit differently (their {', '.join(differ)} differ): every "
                               "worker must call it alike, with all of the same data (each takes its own share "
                               "of every batch)")
