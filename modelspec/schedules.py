"""Learning-rate schedules: the rate of each optimizer step, as Keras computes it.

Keras evaluates a schedule in float32 from the optimizer's step counter, before the counter
is incremented, so the n-th update (n = 1, 2, ...) uses the rate of step n - 1
(keras/src/optimizers/base_optimizer.py, `_get_current_learning_rate`, read in `apply`
before `iterations.assign_add(1)`). The formulas and their order of float32 operations are
those of keras/src/optimizers/schedules/learning_rate_schedule.py; every backend's engine
and crosscheck take their rates from here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

f32 = np.float32


def learning_rate(schedule: Any, step: int) -> np.float32:
    """The rate of 0-based optimizer step `step` (a float32 scalar)."""
    return learning_rates(schedule, np.array([step]))[0]


def learning_rates(schedule: Any, steps: Any) -> np.ndarray:
    """The rates of the 0-based optimizer steps `steps` (float32, one per step)."""
    c = schedule.config()
    name = schedule.name
    steps = np.asarray(steps, dtype=np.int64)
    with np.errstate(over="ignore", under="ignore"):
        if name == "piecewise_constant_decay":
            # Σ value·[step in its range]: one term is 1, the others 0, so the value exactly
            bounds, values = list(c["boundaries"]), [f32(v) for v in c["values"]]
            index = np.searchsorted(np.asarray(bounds, dtype=np.int64), steps, side="left")
            return np.asarray(values, dtype=f32)[index]
        lr0 = f32(c["initial_learning_rate"])
        decay_steps = f32(c["decay_steps"])
        s = steps.astype(f32)
        if name in ("exponential_decay", "inverse_time_decay"):
            p = s / decay_steps
            if c["staircase"]:
                p = np.floor(p)
            rate = f32(c["decay_rate"])
            if name == "exponential_decay":
                return lr0 * np.power(rate, p)
            return lr0 / (f32(1) + rate * p)
        if name == "polynomial_decay":
            end, power = f32(c["end_learning_rate"]), f32(c["power"])
            if c["cycle"]:
                # the first multiple of decay_steps at or above the step (1 at step 0)
                multiplier = np.where(s == 0, f32(1.0), np.ceil(s / f32(c["decay_steps"])).astype(f32))
                d = decay_steps * multiplier
            else:
                s, d = np.minimum(s, decay_steps), decay_steps
            p = s / d
            return (lr0 - end) * np.power(f32(1) - p, power) + end
        if name == "cosine_decay":
            alpha = c["alpha"]
            if c["warmup_target"] is None:
                return _cosine(np.minimum(s, decay_steps), decay_steps, lr0, alpha)
            target, warmup = f32(c["warmup_target"]), f32(c["warmup_steps"])
            s = np.minimum(s, decay_steps + warmup)
            with np.errstate(divide="ignore", invalid="ignore"):  # warmup_steps 0: never taken
                warming = (target - lr0) * (s / warmup) + lr0
            return np.where(s < warmup, warming, _cosine(s - warmup, decay_steps, target, alpha)).astype(f32)
    raise ValueError(f"unknown schedule {name!r}")


def _cosine(s: np.ndarray, decay_steps: np.float32, start: np.float32, alpha: float) -> np.ndarray:
    fraction = s / decay_steps
    decayed = 0.5 * (1.0 + np.cos(f32(math.pi) * fraction))
    return start * ((1 - alpha) * decayed + alpha)
