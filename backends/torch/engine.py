"""The torch Engine: the numbers of fit, evaluate and predict for a built spec, on CPU or CUDA.

The dataset is moved to the device once (`prepare`) and batches are gathered there by
index. The trainable weights share one buffer, and so do their gradients, so that the
check and the update are a few operations however many weights there are. On the CPU a step
is the plain loop a careful engineer writes: forward, loss with penalties, backward, check,
update. On CUDA nothing in a step waits for the host: the
loss and metric sums accumulate on the device, a non-finite loss or gradient clears a
sticky `live` flag that masks off its update and every later one (the weights, optimizer
variables and moving statistics of the last good step are kept), and the sums are read
back once per epoch. There the whole step is captured in a CUDA graph and replayed; if capture is not
possible the same step runs eagerly.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from modelspec import ir, schedules
from modelspec.backends.base import BatchCallback, Engine, EpochTotals
from modelspec.distributed import Group, all_reduce, init as join_group, shard
from modelspec.training import MetricConfig, TrainConfig
from modelspec.checker import Report

from . import keras_ops as K
from .build import GlobalBatch, build
from .lowering import PERMUTES

OPTIMIZERS = {"sgd": K.SGD, "rmsprop": K.RMSprop, "adam": K.Adam, "adamw": K.Adam, "adagrad": K.Adagrad,
              "nadam": K.Nadam, "adadelta": K.Adadelta, "adamax": K.Adamax, "lion": K.Lion}
METRICS = {"categorical_accuracy": K.categorical_accuracy, "sparse_categorical_accuracy": K.sparse_categorical_accuracy,
           "binary_accuracy": K.binary_accuracy, "mse": K.mean_squared_error, "mae": K.mean_absolute_error,
           "top_k_categorical_accuracy": K.top_k_categorical_accuracy,
           "sparse_top_k_categorical_accuracy": K.sparse_top_k_categorical_accuracy}


def metric_function(metric: MetricConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    fn = METRICS[metric.kind]
    return functools.partial(fn, k=metric.k) if metric.k is not None else fn


def loss_function(name: str, from_logits: bool, delta: float = 1.0,
                  label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Keras's loss `name` of (output, y), averaged over the batch. `output` is the logits
    when from_logits (a softmax or sigmoid output with the matching cross-entropy, or the
    output itself). The cross-entropies' label smoothing applies to the loss's labels only."""
    if label_smoothing and name in ("categorical_crossentropy", "binary_crossentropy"):
        loss = loss_function(name, from_logits, delta)
        binary = name == "binary_crossentropy"
        return lambda out, y: loss(out, K.smooth_labels(y, label_smoothing, binary))
    if name == "categorical_crossentropy":
        return K.softmax_cross_entropy if from_logits else K.categorical_crossentropy
    if name == "sparse_categorical_crossentropy":
        return K.sparse_softmax_cross_entropy if from_logits else K.sparse_categorical_crossentropy
    if name == "binary_crossentropy":
        return K.sigmoid_binary_crossentropy if from_logits else K.binary_crossentropy
    if name == "huber":
        return functools.partial(F.huber_loss, delta=delta)
    return {"mse": F.mse_loss, "mae": F.l1_loss}[name]


def optimizer_slots(name: str, hyper: dict[str, Any]) -> list[list[tuple[str, float]]]:
    """Keras's per-weight optimizer variables (name, initial value), grouped as Keras creates
    them: each group is one add_optimizer_variables call, which goes weight by weight."""
    if name == "sgd":
        return [[("momentum", 0.0)]] if hyper["momentum"] != 0 else []
    if name == "rmsprop":
        return ([[("velocity", 0.0)]] + ([[("momentum", 0.0)]] if hyper["momentum"] > 0 else [])
                + ([[("average_gradient", 0.0)]] if hyper["centered"] else []))
    if name == "adagrad":
        return [[("accumulator", hyper["initial_accumulator_value"])]]
    if name == "adadelta":
        return [[("accumulated_grad", 0.0), ("accumulated_delta_var", 0.0)]]
    if name == "adamax":
        return [[("momentum", 0.0), ("norm", 0.0)]]
    if name == "lion":
        return [[("momentum", 0.0)]]
    return [[("momentum", 0.0), ("velocity", 0.0)]]  # adam, adamw, nadam


def resolve_device(device: Any) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'; a clear error otherwise."""
    from modelspec.backends import BackendError

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; received {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"the torch backend runs on 'cpu' or 'cuda'; received device={device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch was built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise BackendError(f"device={device!r} was requested, but CUDA is not available ({why}; "
                               f"torch {torch.__version__}); use device='cpu', or 'auto' to take CUDA "
                               "when there is one")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendError(f"device={device!r} was requested, but this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One contiguous buffer holding `tensors`; each is re-pointed at its slice, values kept.
    The optimizer then updates every weight with a few large operations."""
    if not tensors:
        return None
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    offset = 0
    for t in tensors:
        n = t.numel()
        flat[offset:offset + n].copy_(t.detach().reshape(-1))
        t.data = flat[offset:offset + n].view_as(t)
        offset += n
    return flat


def _finite(t: torch.Tensor) -> bool:
    """Whether every value of `t` is finite, in one fast pass: a sum of finite values is finite
    unless it overflows, which the elementwise check then settles (isfinite is the slow pass)."""
    return math.isfinite(t.sum().item()) or bool(t.isfinite().all())


@contextlib.contextmanager
def on_device(device: torch.device):
    """Work on `device` in float32 as Keras computes it on a CPU: on CUDA, that device is the
    current one, and no TF32 is used in matrix products or convolutions (cuDNN allows it by
    default), so that a GPU gives the CPU's numbers."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.cuda.device(device), torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                                                    allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@dataclass
class Data:
    """A dataset on the engine's device."""

    x: torch.Tensor
    y: torch.Tensor | None
    order: torch.Tensor | None = None  # CUDA: this epoch's order, on the device
    step: torch.Tensor | None = None  # CUDA: the step counter the captured graphs read
    rates: torch.Tensor | None = None  # CUDA: a schedule's rate of each step of this epoch
    graphs: dict[Any, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]


def worker_device(device: Any, group: Group) -> Any:
    """A data-parallel worker's device: its own GPU, cuda:LOCAL_RANK, for 'auto' (when CUDA
    is present) and 'cuda'; any other device as given."""
    if device in (None, "auto") and torch.cuda.is_available() or device == "cuda":
        return f"cuda:{group.local_rank}"
    return device


class TorchEngine(Engine):
    def __init__(self, spec: ir.Spec, report: Report, seed: int = 0, device: Any = "auto",
                 cuda_graphs: bool = True, sync_free: bool | None = None, distributed: Group | None = None) -> None:
        """sync_free: run the CUDA training loop (no host synchronisation per step, masked
        updates); the default is on CUDA only. Tests turn it on to run that loop on a CPU.
        distributed: the workers of a data-parallel run (modelspec.distributed; a group of
        several): this process joins their process group, and trains on its share of each
        global batch with the gradients, the loss and the metric sums summed across them."""
        self.group = distributed if distributed is not None and distributed.world_size > 1 else None
        self.batch = None
        if self.group is not None:
            device = worker_device(device, self.group)
        self.device = resolve_device(device)
        if self.group is not None:
            join_group(self.group, self.device)
            self.batch = GlobalBatch(self.group)
        with torch.device(self.device):
            built = build(spec, report, seed, self.device, self.batch)
        self.native = built.module
        self.spec, self.report = spec, report
        self.weights = built.weights
        self.penalties = built.penalties
        self.sync_free = self.device.type == "cuda" if sync_free is None else bool(sync_free)
        # a captured graph would hold the collectives of one step: they run eagerly instead
        self.cuda_graphs = bool(cuda_graphs) and self.sync_free and self.group is None
        self.params = [t for t, trainable in zip(self.weights.tensors, self.weights.trainable) if trainable]
        self.moving = [t for t, trainable in zip(self.weights.tensors, self.weights.trainable) if not trainable]
        # Every trainable weight lives in one buffer (on CUDA the moving statistics in another),
        # so an update, a finiteness check or a masked restore is a handful of operations, not
        # a handful per weight: on the CPU those would cost a small model a tenth of its step.
        self.flat = _flatten(self.params)
        # each unpenalized embedding's ids and output in the current training forward pass:
        # Keras's optimizers square its sparse gradient by occurrence (K.KerasOptimizer.squares)
        self.taps: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]] = []
        penalized = {id(kernel) for kernel, *_ in self.penalties}
        # where in the one buffer the embeddings whose gradient Keras keeps sparse are
        self.sparse = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.bool, device=self.device)
        for module in self.native.modules():
            if isinstance(module, torch.nn.Embedding) and id(module.weight) not in penalized:
                offset = next(sum(p.numel() for p in self.params[:i]) for i, p in enumerate(self.params)
                              if p is module.weight)
                module.register_forward_hook(self._tap(offset, module.weight))
                self.sparse[offset:offset + module.weight.numel()] = True
        self.flat_moving = _flatten(self.moving) if self.sync_free else None
        self.optimizer: K.KerasOptimizer | None = None
        self.version = 0  # bumped by set_training: captured graphs belong to one optimizer
        if self.sync_free:
            # `live` is cleared by a non-finite step (and during warm-up): it masks every later update
            self.live = torch.ones((), dtype=torch.bool, device=self.device)
            self.stopped_at = torch.full((), -1, dtype=torch.int64, device=self.device)

    def _tap(self, offset: int, weight: torch.Tensor) -> Callable:
        def hook(module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if torch.is_grad_enabled() and output.requires_grad:
                self.taps.append((inputs[0], output, offset, weight))
        return hook

    def _gradient(self, loss: torch.Tensor, values: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gradients of every trainable weight in one buffer, as the weights; a weight the
        loss does not reach (before a dropout of rate 1) gets zeros, which leave it unchanged
        under every optimizer's rule from zero state. With embeddings, also the squares (and
        absolute values) Keras's optimizers take of their sparse gradients. Distributed, the
        gradients, those squares and `values` (the step's loss and metric sums) are summed
        over the workers in one all-reduce; returns (gradients, values)."""
        taps, self.taps = self.taps, []
        grads = torch.autograd.grad(loss, [*self.params, *(out for _, out, _, _ in taps)], materialize_grads=True)
        flat = torch.cat([g.reshape(-1) for g in grads[:len(self.params)]])
        if not taps:
            if self.group is not None:
                flat, values = self._sum_over_workers(flat, values)
            return flat, values
        absolute = isinstance(self.optimizer, K.Adamax)  # the one optimizer that reads ops.abs
        clipvalue = self.optimizer.clipvalue
        rows = [(ids.reshape(-1), dy.reshape(-1, weight.shape[1]), offset, weight)
                for (ids, _, offset, weight), dy in zip(taps, grads[len(self.params):])]
        if clipvalue:  # Keras clips each row of the sparse gradient, then sums an id's rows
            rows = [(ids, dy.clamp(-clipvalue, clipvalue), offset, weight) for ids, dy, offset, weight in rows]
            for ids, dy, offset, weight in rows:
                flat[offset:offset + weight.numel()] = torch.zeros_like(weight).index_add(0, ids, dy).reshape(-1)
        squares, absolutes = flat.square(), flat.abs() if absolute else None
        for ids, dy, offset, weight in rows:
            zeros = torch.zeros_like(weight)
            squares[offset:offset + weight.numel()] = zeros.index_add(0, ids, dy.square()).reshape(-1)
            if absolute:
                absolutes[offset:offset + weight.numel()] = zeros.index_add(0, ids, dy.abs()).reshape(-1)
        if self.group is not None:  # the squares are sums over occurrences: summed over the workers too
            flat, squares, absolutes, values = self._sum_over_workers(flat, squares, absolutes, values)
            squares = torch.where(self.sparse, squares, flat.square())  # the dense weights': of the sum
            if absolute:
                absolutes = torch.where(self.sparse, absolutes, flat.abs())
        self.optimizer.squares = {self.flat: squares}
        self.optimizer.absolutes = {self.flat: absolutes} if absolute else {}
        return flat, values

    def _sum_over_workers(self, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
        """Each tensor summed over the workers, in one all-reduce (None stays None)."""
        given = [t for t in tensors if t is not None]
        buffer = torch.cat([t.reshape(-1) for t in given])
        all_reduce(buffer)
        parts = iter(buffer.split([t.numel() for t in given]))
        return [None if t is None else next(parts).view_as(t) for t in tensors]

    # -- training settings ---------------------------------------------------------------

    def set_training(self, config: TrainConfig) -> None:
        hyper = dict(config.hyper)
        self.config = config
        loss = config.loss
        self.loss_fn = loss_function(loss.name, loss.from_logits, loss.delta, loss.label_smoothing)
        self.metric_fns = [metric_function(m) for m in config.metrics]
        targets = [self.flat] if self.flat is not None else self.params
        # a schedule's rate is written into the optimizer's learning_rate before each step
        self.schedule = config.schedule
        rate = hyper.pop("learning_rate")
        rate = schedules.learning_rate(self.schedule, 0) if self.schedule is not None else np.float32(rate)
        self.optimizer = OPTIMIZERS[config.optimizer](targets, learning_rate=float(rate), **hyper)
        if self.flat is not None:  # clipnorm clips each weight's part of the one buffer by its own norm
            self.optimizer.sizes[self.flat] = [p.numel() for p in self.params]
            if self.optimizer.clipvalue and self.sparse.any():  # `_gradient` clips the embeddings' rows
                self.optimizer.preclipped[self.flat] = self.sparse
        self.slot_groups = optimizer_slots(config.optimizer, config.hyper)
        self.slots = [slot for group in self.slot_groups for slot in group]
        for name, initial in self.slots:  # created now, so a captured step finds them in place
            for t in targets:
                self.optimizer.slot(t, name, initial)
        self.optimizer_built = False  # as Keras's: by the first training step
        self.version += 1
        if self.sync_free:
            self.masked = [*targets, *(self.optimizer.state[t][name] for name, _ in self.slots for t in targets),
                           self.optimizer.iterations]
            if isinstance(self.optimizer, K.Nadam):
                self.masked.append(self.optimizer.u_product)
            if self.flat_moving is not None:
                self.masked.append(self.flat_moving)
            self.backup = [torch.empty_like(t) for t in self.masked]
            self.sums = torch.zeros(1 + len(self.metric_fns), dtype=torch.float64, device=self.device)

    # -- data ----------------------------------------------------------------------------

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        """x on the device: float32, or the ids of `input ... int` as int64 (the Model has checked
        them; a float id is truncated toward 0, as Keras's Embedding casts it)."""
        dtype = np.int64 if self.spec.input_dtype == "int32" else np.float32
        return torch.as_tensor(np.ascontiguousarray(x, dtype=dtype)).to(self.device)

    def prepare(self, x: np.ndarray, y: np.ndarray | None) -> Data:
        xt = self.inputs(x)
        yt = None
        if y is not None:
            y = np.asarray(y)
            yt = torch.as_tensor(np.ascontiguousarray(y, dtype=np.int64 if y.dtype.kind in "iu" else np.float32))
            yt = yt.to(self.device)
        data = Data(xt, yt)
        if self.sync_free:
            data.order = torch.empty(len(xt), dtype=torch.int64, device=self.device)
            data.step = torch.zeros(1, dtype=torch.int64, device=self.device)
            data.rates = torch.zeros(max(1, len(xt)), dtype=torch.float32, device=self.device)
        return data

    # -- the loss ------------------------------------------------------------------------

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor, total: int | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(data loss + weight penalties, the output the loss saw). total: the global batch's
        size in a distributed training step, of which xb is this worker's rows: the data loss
        is then weighted by their share and the penalties are counted on worker 0 only, so
        that the workers' losses sum to the global batch's."""
        if total is None:
            out = self.native.logits(xb) if self.config.loss.from_logits else self.native(xb)
            loss = self.loss_fn(out, yb)
        else:
            with self.batch.step(total, shard(total, self.group)):
                out = self.native.logits(xb) if self.config.loss.from_logits else self.native(xb)
            # a worker without rows (a last batch smaller than the group) still runs the backward
            # pass, whose all-reduces (batchnorm's) every worker must join
            loss = self.loss_fn(out, yb) * (len(xb) / total) if len(xb) else out.sum() * 0.0
            if not self.group.is_main:
                return loss, out
        for w, l1, l2 in self.penalties:
            if l1:
                loss = loss + l1 * w.abs().sum()
            if l2:
                loss = loss + l2 * w.square().sum()
        return loss, out

    def _metric_sums(self, out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Σ over the batch of each metric's per-sample value, as one tensor."""
        if not self.metric_fns:
            return out.new_zeros(0)
        out = out.detach()
        if self.config.loss.from_logits and self.native.output_activation is not None:
            out = self.native.output_activation(out)  # (logits that are the output itself are read as they are)
        values = [fn(out, yb) for fn in self.metric_fns]  # per sample, or per element of a sample
        return torch.stack([(v if v.dim() == 1 else v.flatten(1).mean(dim=1)).sum() for v in values])

    # -- training: the step of Engine.train_epoch (CPU) -----------------------------------

    def train_epoch(self, data: Data, order: np.ndarray, batch_size: int,
                    on_batch: BatchCallback | None = None) -> EpochTotals:
        self.require_training()
        self.native.train()
        self.optimizer_built = self.optimizer_built or len(order) > 0
        with on_device(self.device):
            if self.sync_free:
                return self._train_epoch_sync_free(data, order, batch_size, on_batch)
            return super().train_epoch(data, order, batch_size, on_batch)

    def epoch_index(self, data: Data, order: np.ndarray, batch_size: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64)).to(data.x.device)

    def step(self, data: Data, idx: torch.Tensor) -> tuple[float, list[float], bool]:
        if self.group is not None:
            return self._shared_step(data, idx)
        xb, yb = data.x.index_select(0, idx), data.y.index_select(0, idx)
        saved = [t.clone() for t in self.moving]  # the step's moving statistics are undone if it fails
        self.taps = []  # (a forward pass with gradients that no step followed leaves none)
        loss, out = self._loss(xb, yb)
        if self.flat is not None:
            self.flat.grad, _ = self._gradient(loss)
        value = loss.item()
        applied = self._apply(value, saved)
        return value, self._metric_sums(out, yb).tolist() if self.metric_fns else [], applied

    def _shared_step(self, data: Data, idx: torch.Tensor) -> tuple[float, list[float], bool]:
        """A distributed step: this worker's rows of the global batch `idx`."""
        total = len(idx)
        idx = idx[shard(total, self.group)]
        xb, yb = data.x.index_select(0, idx), data.y.index_select(0, idx)
        saved = [t.clone() for t in self.moving]
        self.taps = []
        loss, out = self._loss(xb, yb, total)
        values = torch.cat([loss.detach().reshape(1), self._metric_sums(out, yb)])
        if self.flat is not None:
            self.flat.grad, values = self._gradient(loss, values)
        else:
            values, = self._sum_over_workers(values)
        value, *sums = values.tolist()
        return value, sums, self._apply(value, saved)

    def _apply(self, value: float, saved: list[torch.Tensor]) -> bool:
        """The update of a step whose loss is `value`, if it and the gradients are finite
        (else the moving statistics are put back as `saved`); whether it was applied."""
        applied = math.isfinite(value) and (self.flat is None or _finite(self.flat.grad))
        if applied:
            if self.flat is not None:  # (a model with no trainable weight has nothing to update)
                if self.schedule is not None:  # the rate of the step counter before this update
                    rate = schedules.learning_rate(self.schedule, int(self.optimizer.iterations))
                    self.optimizer.learning_rate.fill_(float(rate))
                self.optimizer.apply_gradients()
        else:
            with torch.no_grad():
                for t, s in zip(self.moving, saved):
                    t.copy_(s)
        return applied

    # -- training: CUDA (sync-free) ------------------------------------------------------

    def _masked_step(self, data: Data, batch_size: int, start: int | None) -> None:
        """One step with no host synchronisation. start=None: the full batch the device step
        counter points at; otherwise the last, partial batch, from `start`."""
        if start is None:
            rows = data.order[: len(data) // batch_size * batch_size].view(-1, batch_size)
            idx = rows.index_select(0, data.step).view(-1)
        else:
            idx = data.order[start:]
        total = None
        if self.group is not None:  # this worker's rows of the global batch
            total = len(idx)
            idx = idx[shard(total, self.group)]
        xb, yb = data.x.index_select(0, idx), data.y.index_select(0, idx)
        torch._foreach_copy_(self.backup, self.masked)
        self.taps = []  # (a forward pass with gradients that no step followed leaves none)
        loss, out = self._loss(xb, yb, total)
        values = torch.cat([loss.detach().reshape(1), self._metric_sums(out, yb)])
        flat_grad, values = self._gradient(loss, values)  # (distributed: each summed over the workers)
        finite = torch.isfinite(flat_grad).all() & torch.isfinite(values[0])
        ok = finite & self.live
        self.flat.grad = flat_grad
        if self.schedule is not None:  # this step's rate, from the epoch's table
            self.optimizer.learning_rate.copy_(data.rates.index_select(0, data.step).view(()))
        self.optimizer.apply_gradients()
        with torch.no_grad():
            for t, b in zip(self.masked, self.backup):  # a failed or masked step changes nothing
                torch.where(ok, t, b, out=t)
            # the batch counts while training is live, the failed step's included (as on the CPU)
            values = values.double()
            values[:1].mul_(total or idx.numel())
            self.sums.add_(torch.where(self.live, values, 0.0))
            torch.where(self.live & ~finite, data.step[0], self.stopped_at, out=self.stopped_at)
            self.live.logical_and_(finite)
        data.step.add_(1)

    def _train_epoch_sync_free(self, data: Data, order: np.ndarray, batch_size: int,
                               on_batch: BatchCallback | None) -> EpochTotals:
        data.order.copy_(torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64)))
        full, rest = divmod(len(order), batch_size)
        if self.schedule is not None:  # the rates of the epoch's steps, from the step counter read once
            first = int(self.optimizer.iterations.item())
            rates = schedules.learning_rates(self.schedule, first + np.arange(full + bool(rest)))
            data.rates[:len(rates)].copy_(torch.from_numpy(rates))
        runs = ([(None, full)] if full else []) + ([(full * batch_size, 1)] if rest else [])
        steps = [self._runner(data, batch_size, start) for start, _ in runs]
        data.step.zero_()
        self.sums.zero_()
        self.live.fill_(True)
        self.stopped_at.fill_(-1)
        step = 0
        for run, (_, count) in zip(steps, runs):
            for _ in range(count):
                run()
                if on_batch is not None:
                    loss_sum, *metrics = self.sums.tolist()
                    on_batch(step, min((step + 1) * batch_size, len(order)), loss_sum, metrics)
                step += 1
        loss_sum, *metrics = self.sums.tolist()  # the epoch's one read-back
        stopped_at = int(self.stopped_at.item())
        count = len(order) if stopped_at < 0 else min((stopped_at + 1) * batch_size, len(order))
        return EpochTotals(loss_sum=loss_sum, metric_sums=metrics, count=count,
                           stopped_at=None if stopped_at < 0 else stopped_at)

    def _runner(self, data: Data, batch_size: int, start: int | None) -> Callable[[], None]:
        """The step as a replayable CUDA graph, or as a function when graphs are off or fail."""
        eager = functools.partial(self._masked_step, data, batch_size, start)
        if not self.cuda_graphs:
            return eager
        key = (self.version, batch_size, start)
        if key not in data.graphs:
            data.graphs[key] = self._capture(eager, data)
        graph = data.graphs[key]
        return graph.replay if graph is not None else eager

    def _capture(self, step: Callable[[], None], data: Data) -> Any:
        generators = [m.generator for m in self.native.modules() if hasattr(m, "generator") and m.rate > 0]
        if generators and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            return None
        self.live.fill_(False)  # warm-up and capture must leave every weight as it was
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # cuBLAS handles, autograd's device thread, allocator blocks
                    step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            for g in generators:
                graph.register_generator_state(g)
            with torch.cuda.graph(graph):
                step()
            return graph
        except Exception as e:  # capture is an optimisation: fall back to running the step eagerly
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); training runs step by step",
                          RuntimeWarning, stacklevel=4)
            self.cuda_graphs = False
            return None
        finally:
            self.live.fill_(True)
            data.step.zero_()

    # -- evaluation and prediction ---------------------------------------------------------

    @torch.inference_mode()
    def evaluate(self, data: Data, batch_size: int) -> EpochTotals:
        self.require_training()
        self.native.eval()
        sums = torch.zeros(1 + len(self.metric_fns), dtype=torch.float64, device=self.device)
        # distributed, each worker evaluates its contiguous share of the samples, and the sums are
        # summed: inference reads no batch statistic, so the figures are one process's
        rows = shard(len(data), self.group)
        x, y = data.x[rows], data.y[rows]
        with on_device(self.device):
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                loss, out = self._loss(xb, yb)
                sums += torch.cat([loss.double().reshape(1) * len(xb), self._metric_sums(out, yb).double()])
            if self.group is not None:
                all_reduce(sums)
        loss_sum, *metrics = sums.tolist()
        return EpochTotals(loss_sum=loss_sum, metric_sums=metrics, count=len(data))

    @torch.inference_mode()
    def predict(self, data: Data, batch_size: int) -> np.ndarray:
        """Every sample's output; distributed, every worker predicts all of them itself (no
        collective: the outputs are the same everywhere, and each worker has them all)."""
        self.native.eval()
        with on_device(self.device):
            outs = [self.native(data.x[start:start + batch_size]) for start in range(0, len(data), batch_size)]
        return torch.cat(outs).cpu().numpy()

    @torch.inference_mode()
    def layer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's output in inference mode, in report.layers's order, channels-last as
        in Keras (the layout switches the module inserts are not layers of the spec)."""
        from .plan import plan

        self.native.eval()
        p = plan(self.spec, self.report)
        steps = p.steps
        modules = dict(self.native.layers.named_children())
        out: list[np.ndarray] = []
        with on_device(self.device):
            z = self.inputs(x)
            if p.nodes is None:
                outputs = []
                for step in steps:
                    if step.permute:
                        z = z.permute(*PERMUTES[step.permute][0])
                    z = modules[step.attr](z)
                    outputs.append(z)
            else:  # a graph: its layers' values, in Keras's layer order (report.layers)
                outputs = [v for node, v in zip(p.nodes, self.native.values(z, keep=True)) if node.step]
            for step, z in zip(steps, outputs):
                shown = z
                if step.nchw and z.dim() in (3, 4):  # back to Keras's channels-last
                    shown = z.permute(0, 2, 3, 1) if z.dim() == 4 else z.permute(0, 2, 1)
                out.append(shown.cpu().numpy().astype(np.float32))
        if self.native.output_activation is not None:
            out[-1] = self.native(self.inputs(x)).cpu().numpy()
        return out

    # -- weights -------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        with torch.no_grad():
            return [np.array(to_keras(t.detach()).cpu().numpy(), dtype=np.float32, order="C", copy=True)
                    for t, to_keras in zip(self.weights.tensors, self.weights.to_keras)]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for t, from_keras, w in zip(self.weights.tensors, self.weights.from_keras, weights):
                t.copy_(from_keras(torch.from_numpy(np.asarray(w, dtype=np.float32))))

    def optimizer_state(self) -> list[np.ndarray]:
        """Keras's optimizer variables, once a training step has built them: iteration,
        learning_rate, then the slots in the order Keras creates them, in Keras's layouts."""
        if self.optimizer is None or not self.optimizer_built:
            return []
        opt = self.optimizer
        out = [np.array(opt.iterations.item(), dtype=np.int64)]
        if self.schedule is None:  # Keras keeps a schedule as it is, not as a variable
            out.append(np.array(opt.learning_rate.item(), dtype=np.float32))
        for group in self.slot_groups:
            for i, (p, to_keras) in enumerate(self._trainable_with_layout()):
                for name, _ in group:
                    out.append(np.array(to_keras(self._slot_of(name, i, p)).cpu().numpy(), dtype=np.float32,
                                        order="C"))
        if isinstance(opt, K.Nadam):
            out.append(np.array(opt.u_product.item(), dtype=np.float32))
        return out

    def set_learning_rate(self, value: float) -> None:
        if self.optimizer is None:
            self.require_training()
        if self.schedule is not None:
            raise ValueError("the learning rate follows a schedule and cannot be set")
        self.optimizer.learning_rate.fill_(float(np.float32(value)))

    def next_learning_rate(self) -> float:
        self.require_training()
        if self.schedule is not None:
            return float(schedules.learning_rate(self.schedule, int(self.optimizer.iterations)))
        return float(self.optimizer.learning_rate)

    def get_state(self) -> dict[str, np.ndarray]:
        """The optimizer's variables, each slot as the one buffer the engine keeps (the
        trainable weights end to end, in Keras's order, in torch's layouts), and each random
        generator's state (dropout, attention's dropout) as its bytes, keyed by module path."""
        self.require_training()
        opt = self.optimizer
        state = {"optimizer/built": np.array(self.optimizer_built, dtype=np.uint8),
                 "optimizer/iterations": np.array(opt.iterations.item(), dtype=np.int64),
                 "optimizer/learning_rate": np.array(opt.learning_rate.item(), dtype=np.float32)}
        if self.flat is not None:
            for name, _ in self.slots:
                state[f"optimizer/{name}"] = opt.state[self.flat][name].detach().cpu().numpy().copy()
        if isinstance(opt, K.Nadam):
            state["optimizer/u_product"] = np.array(opt.u_product.item(), dtype=np.float32)
        for path, generator in self._generators():
            state[f"generator/{path}"] = generator.get_state().numpy().copy()
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        expected = self.get_state()
        if set(state) != set(expected):
            missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise ValueError("the training state does not fit this model and optimizer: "
                             + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                           f"unexpected {', '.join(unknown)}" if unknown else "")
                                         if part))
        for key, value in expected.items():
            if np.shape(state[key]) != value.shape:
                raise ValueError(f"the training state's {key} has shape {np.shape(state[key])}; "
                                 f"this model's has {value.shape}")
        opt = self.optimizer
        with torch.no_grad():  # in place: captured CUDA graphs read these tensors where they are
            self.optimizer_built = bool(state["optimizer/built"])
            opt.iterations.fill_(int(state["optimizer/iterations"]))
            opt.learning_rate.fill_(float(state["optimizer/learning_rate"]))
            if self.flat is not None:
                for name, _ in self.slots:
                    opt.state[self.flat][name].copy_(torch.from_numpy(np.asarray(state[f"optimizer/{name}"])))
            if isinstance(opt, K.Nadam):
                opt.u_product.fill_(float(state["optimizer/u_product"]))
        for path, generator in self._generators():
            generator.set_state(torch.from_numpy(np.array(state[f"generator/{path}"], dtype=np.uint8)))

    def _generators(self) -> list[tuple[str, torch.Generator]]:
        """Every module's own random generator (build.py's), by module path."""
        return [(path, m.generator) for path, m in self.native.named_modules()
                if isinstance(getattr(m, "generator", None), torch.Generator)]

    def _trainable_with_layout(self) -> list[tuple[torch.Tensor, Callable]]:
        return [(t, f) for t, f, trainable in zip(self.weights.tensors, self.weights.to_keras, self.weights.trainable)
                if trainable]

    def _slot_of(self, name: str, i: int, param: torch.Tensor) -> torch.Tensor:
        if self.flat is None:
            return self.optimizer.state[param][name].detach()
        offset = sum(p.numel() for p in self.params[:i])
        return self.optimizer.state[self.flat][name].detach()[offset:offset + param.numel()].view_as(param)
