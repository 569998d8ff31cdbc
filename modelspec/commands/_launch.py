"""`modelspec train --nproc N`: data-parallel training in N local worker processes, started by
torch's elastic launcher (what `torchrun --standalone --nproc-per-node N` runs), each running the
same train command; and what a worker does differently from one process (under this launcher or
under `torchrun` directly): rank 0 alone prints and writes, every rank's failure is one line.

The launcher owns Ctrl-C: torch starts each worker in a session of its own
(torch/distributed/elastic/multiprocessing/subprocess_handler/subprocess_handler.py), so a
terminal's SIGINT reaches the launcher only; it passes each Ctrl-C on to the workers, which stop
together at the end of an epoch (rank 0 saves) or, on the second, abort. Like the commands, this
module imports nothing heavy at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import CommandError
from ._arguments import positive_int

LAUNCHED = "MODELSPEC_LAUNCHED"  # set for the workers `--nproc` starts: their errors go to the launcher
SHUTDOWN_TIMEOUT = 5  # seconds a worker has to end after SIGTERM before SIGKILL, once a peer has failed
ONLY_TORCH = ("the {backend} backend trains in one process; {what} (data-parallel training on torch.distributed) "
              "needs --backend torch (Keras 3's own keras.distribution runs only on its JAX backend)")


class PeerLost(CommandError):
    """A collective failed because another worker ended or stopped answering: that worker's
    failure is the one to report, not this one."""


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=positive_int, metavar="N",
                   help="train data-parallel in N local worker processes (torch backend; gloo on the CPU, one "
                        "GPU per worker with --device cuda); the same weights and history as one process")


# ---------------------------------------------------------------------------------------
# Which kind of process this is


def group_from_env() -> Any:
    """The torch.distributed group torchrun (or --nproc) started this process in, or None for a
    run in one process (no WORLD_SIZE in the environment, or a world of one)."""
    if not os.environ.get("WORLD_SIZE"):
        return None
    from ..distributed import Group

    group = Group.from_env()
    return group if group is not None and group.world_size > 1 else None


def check_parallel(args: argparse.Namespace, group: Any) -> None:
    """Refuse, before any work, what N processes cannot do."""
    n = args.nproc if group is None else group.world_size
    if os.environ.get("WORLD_SIZE") and args.nproc is not None:
        raise CommandError(f"--nproc {args.nproc}: this process is already one of {os.environ['WORLD_SIZE']} "
                           "workers (WORLD_SIZE is set, as torchrun sets it); leave out --nproc under torchrun")
    if n is None or n <= 1:
        return
    if args.backend != "torch":
        what = f"--nproc {n}" if group is None else f"{n} workers (WORLD_SIZE={n}, as torchrun sets it)"
        raise CommandError(ONLY_TORCH.format(backend=args.backend, what=what))
    if args.device.startswith("cuda:"):
        raise CommandError(f"--device {args.device} names one GPU, but each of the {n} workers takes the GPU of "
                           "its local rank; give --device cuda")
    if args.device == "cuda":
        import torch

        local = args.nproc if group is None else group.local_rank + 1
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count < local:
            raise CommandError(f"--device cuda with {n} workers needs one GPU per local worker ({local} on this "
                               f"machine); {count} {'is' if count == 1 else 'are'} available")


# ---------------------------------------------------------------------------------------
# The worker


def run_worker(group: Any, body: Callable[[], int]) -> int:
    """A worker's train command: ranks other than 0 print nothing but their errors; every rank
    waits at the end until rank 0 has written and printed everything (a worker that ends first
    would otherwise look like a failure to the launcher, which stops the others); a failed
    collective is a PeerLost, reported as the consequence it is."""
    import contextlib

    import torch.distributed as dist

    from ..distributed import DistributedError

    # the launcher stops the other workers with SIGTERM once one has failed: end as an
    # exception does, so that no temporary file of an atomic write is left behind
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    quiet = group.rank != 0
    try:
        with open(os.devnull, "w") as devnull, contextlib.ExitStack() as stack:
            if quiet:
                stack.enter_context(contextlib.redirect_stdout(devnull))
                stack.enter_context(contextlib.redirect_stderr(devnull))
            code = body()
            if dist.is_initialized():
                dist.barrier()
    except _Terminated as e:  # unwound (no temporary file is left); torch's exit hooks could wait on peers
        sys.stdout.flush()
        os._exit(e.code)
    except Exception as e:
        if isinstance(e, CommandError):
            raise
        if isinstance(e, DistributedError):  # modelspec.distributed's own words
            if _collective_failure(e.__cause__):
                raise PeerLost(str(e)) from None
            raise CommandError(str(e)) from None
        if not _collective_failure(e):
            raise
        raise PeerLost(f"worker {group.rank} of {group.world_size}: lost contact with the other workers "
                       f"({_first_line(e)})") from None
    finally:  # nothing is written from here on; exit as the launcher asks
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.environ.get(LAUNCHED) and code:
        record_outcome(code)
    return code


def _collective_failure(e: BaseException | None) -> bool:
    """Whether `e` is torch.distributed's: a collective or the rendezvous failed, because another
    worker ended, stopped answering (the collectives' timeout), or could not be reached. gloo
    raises a plain RuntimeError naming itself (third_party/gloo/gloo/transport/tcp/pair.cc)."""
    import torch.distributed as dist

    if e is None:
        return False
    text = str(e)
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and (
        "gloo" in text or "NCCL" in text or "ProcessGroup" in text))


class _Terminated(SystemExit):
    pass


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated(128 + signum)


def _first_line(e: BaseException) -> str:
    from ..errors import one_line

    text = str(e).strip().splitlines()
    return one_line(text[0]) if text else type(e).__name__


def quiet_errors() -> bool:
    """Whether this process is a worker whose errors the launcher reports (in one line)."""
    return bool(os.environ.get(LAUNCHED)) and bool(os.environ.get("TORCHELASTIC_ERROR_FILE"))


def record_error(message: str, error: BaseException | None, code: int) -> None:
    """A worker's failure, in the error file torch's launcher reads back (ProcessFailure in
    torch/distributed/elastic/multiprocessing/errors/__init__.py); torchrun shows it too."""
    _write_error_file({"message": message, "timestamp": int(time.time()),
                       "modelspec": {"peer": isinstance(error, PeerLost), "reported": False, "code": code,
                                      "time": time.time()}})


def record_outcome(code: int) -> None:
    """A run that ended with a code of its own (interrupted, stopped), which rank 0 has reported."""
    _write_error_file({"message": f"ended with exit code {code}, reported by rank 0", "timestamp": int(time.time()),
                       "modelspec": {"peer": False, "reported": True, "code": code}})


def _write_error_file(data: dict[str, Any]) -> None:
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        from ..fileio import write_atomic

        write_atomic(path, json.dumps(data))
    except OSError:
        pass  # the launcher then reports the exit code alone


# ---------------------------------------------------------------------------------------
# The launcher


def worker_command(words: list[str]) -> list[str]:
    """The train command's words without --nproc (also as --nproc=N or an abbreviation argparse
    accepts, such as --np N): what each worker runs."""
    kept, skip = [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == "--":
            kept += words[i:]
            break
        name = word.split("=", 1)[0]
        if len(name) >= 4 and "--nproc".startswith(name):
            skip = "=" not in word
            continue
        kept.append(word)
    return kept


def launch(args: argparse.Namespace, words: list[str], out: Path) -> int:
    """Run `python -m modelspec train ...` (the same command without --nproc) in args.nproc
    local workers through torch's elastic launcher: a standalone rendezvous on localhost at a free
    port, no restarts. Returns the run's exit code; a failed worker is one line."""
    import logging
    import shutil
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException

    from ._runs import drop_stale_lock
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = args.nproc
    for name in list(logging.root.manager.loggerDict):  # the agent's progress is not the user's
        if name.startswith("torch.distributed"):
            logging.getLogger(name).disabled = True
    logs = tempfile.mkdtemp(prefix="modelspec-workers-")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=str(uuid.uuid4()), role="modelspec",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(log_dir=logs), signals_to_handle="SIGTERM,SIGHUP,SIGQUIT",
        shutdown_timeout=SHUTDOWN_TIMEOUT)
    env = {LAUNCHED: "1"}
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun: N workers share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    interrupts = _Interrupts()
    previous = signal.signal(signal.SIGINT, interrupts.handle)
    try:
        elastic_launch(config, sys.executable)("-m", "modelspec", *worker_command(words))
        return 130 if interrupts.count else 0
    except ChildFailedError as e:
        return _failed(e, n, interrupts.count > 0)
    except SignalException:  # SIGTERM, SIGHUP: the agent stopped the workers first
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(logs, ignore_errors=True)
        drop_stale_lock(out)


class _Interrupts:
    """Ctrl-C while workers train: the first and the second are passed on to the workers (stop
    after this epoch; abort), a third, or one before any worker has started, stops them all
    from here (the launcher's shutdown: SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.count = 0

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        workers = _workers()
        if self.count > 2 or not workers:
            raise KeyboardInterrupt
        for pid in workers:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass


def _workers() -> list[int]:
    """The worker processes: this process's children that lead a session of their own, as
    torch starts them. Read from /proc (Linux); none found elsewhere."""
    me, found = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the name: state, ppid, pgrp, session
        if int(fields[1]) == me and int(fields[3]) == int(entry):
            found.append(int(entry))
    return found


def _failed(error: Any, n: int, interrupted: bool) -> int:
    """The exit code of a run whose workers did not all succeed, or the CommandError (one line)
    that says which worker failed and how."""
    failures = sorted(error.failures.items())

    def info(failure: Any) -> dict[str, Any]:
        data = failure.error_file_data.get("modelspec") if isinstance(failure.error_file_data, dict) else None
        return data if isinstance(data, dict) else {}

    # the cause first: an error a worker reported (the earliest), a worker killed by a signal
    # other than the launcher's SIGTERM, an exit code without a message; then the consequences
    def rank_of(item: tuple[int, Any]) -> tuple[int, float, int]:
        rank, failure = item
        data = info(failure)
        if data.get("reported") or data.get("peer"):
            return (4 if data.get("reported") else 5), 0, rank
        if data:
            return 0, float(data.get("time", 0)), rank
        if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM:
            return 1, 0, rank
        if failure.exitcode in (-signal.SIGTERM, 128 + signal.SIGTERM):
            return 3, 0, rank
        return 2, 0, rank

    rank, failure = min(failures, key=rank_of)
    data = info(failure)
    who = f"worker rank {rank} of {n}"
    if data.get("reported"):  # rank 0 said how the run ended
        return int(data.get("code", failure.exitcode))
    if interrupted and failure.exitcode in (130, -signal.SIGINT):  # the second Ctrl-C
        raise KeyboardInterrupt
    if data:
        message = str(failure.message)
        raise CommandError(f"{message}{'' if f' {rank} of {n}' in message else f' ({who})'}; the other workers "
                           "were stopped", int(data.get("code") or 1))
    if failure.exitcode < 0 or failure.exitcode == 128 + signal.SIGTERM:  # run_worker's SIGTERM exit
        name = failure.signal_name() if failure.exitcode < 0 else signal.SIGTERM.name
        raise CommandError(f"{who} (process {failure.pid}) was killed by signal {name}; the other workers were "
                           "stopped")
    raise CommandError(f"{who} (process {failure.pid}) ended with exit code {failure.exitcode} and no message (its "
                       "output, if any, is above); the other workers were stopped")
