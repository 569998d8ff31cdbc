"""The differential-fuzzing corpus (issue 7): random valid specs, reproducible, and how a
failing one is reported so that it can become a regression case in specs/.

    MODELSPEC_FUZZ_SEED=123 MODELSPEC_FUZZ_N=1000 pytest tests/test_fuzz_crosscheck.py -n 2

runs a different (or bigger) campaign than the fixed one the suite runs by default.
Specs come from tests/specgen.py with `well_conditioned=True` (no construction whose
float32 training no two frameworks can reproduce; specgen.WELL_CONDITIONED says which)
and small sizes, since Keras traces a graph per model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

import specgen

DEFAULT_SEED = 7
DEFAULT_N = 100
SEED = int(os.environ.get("MODELSPEC_FUZZ_SEED", DEFAULT_SEED))
N = int(os.environ.get("MODELSPEC_FUZZ_N", DEFAULT_N))
CHUNK = 10  # specs per test, so that pytest-xdist can spread a campaign

# Small: Keras builds and traces every model (~0.3 s each), and the whole campaign has a
# budget of about 100 s on two cores.
GENERATOR = dict(max_layers=4, max_image=8, max_channels=2, well_conditioned=True)
BATCH = 8
STEPS = 10
LONG_STEPS = 20  # crosscheck's default, on every fifth spec
LONG_EVERY = 5


@dataclass(frozen=True)
class Case:
    seed: int  # the campaign's
    index: int
    text: str
    steps: int
    batch_size: int

    @property
    def crosscheck_seed(self) -> int:
        """The initial weights and the synthetic batches: one per spec."""
        return self.index

    @property
    def name(self) -> str:
        return f"regression_fuzz_{self.seed}_{self.index}"


def cases(n: int = N, seed: int = SEED) -> list[Case]:
    texts = specgen.spec_texts(n, seed=seed, **GENERATOR)
    return [Case(seed, i, text, LONG_STEPS if i % LONG_EVERY == 0 else STEPS, BATCH)
            for i, text in enumerate(texts)]


def chunks(n: int = N) -> list[range]:
    return [range(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]


def installed_backends() -> list[str]:
    """Every installed backend, numpy first (the reference), as `modelspec crosscheck` orders them."""
    from modelspec import backends

    return sorted(backends.installed(), key=lambda n: (n != "numpy", n))


# ---------------------------------------------------------------------------------------
# Reports


def as_regression_spec(case: Case, what: str) -> str:
    """The spec's text, ready to save as specs/<case.name>.ms: a comment saying where it
    came from and what it caught, and the model named after the file (the figures table
    in tests/test_check_tutorial.py keys on it). Nothing else of the text changes."""
    text = case.text.strip("\n")
    renamed, count = re.subn(r'^model\s+("[^"]*"|\S+?)(?=\s*(;|$))', f"model {case.name}", text,
                             count=1, flags=re.MULTILINE)
    if not count:
        renamed = f"model {case.name}\n{text}"
    header = [f"# Regression case found by tests/test_fuzz_crosscheck.py (MODELSPEC_FUZZ_SEED={case.seed}, "
              f"spec {case.index}),",
              f"# crosschecked with --steps {case.steps} --batch {case.batch_size} --seed {case.crosscheck_seed}:",
              *(f"#   {line}" for line in what.splitlines())]
    return "\n".join(header) + "\n" + renamed + "\n"


def failure_report(case: Case, result, float64: dict[str, float] | None = None) -> str:
    """Everything needed to see and keep a failing case: the first diverging layer and
    backend, every backend's loss per step, the float64 opinion, and the whole spec."""
    ref = result.reference
    others = [b for b in result.backends if b != ref]
    lines = [f"crosscheck failed: MODELSPEC_FUZZ_SEED={case.seed}, spec {case.index} "
             f"({case.steps} steps, batch {case.batch_size}, crosscheck seed {case.crosscheck_seed}; "
             f"reference {ref})"]
    summary = []
    first = result.first_divergence
    if first is not None:
        layer, backend = first
        summary.append(f"forward: first divergence at layer {layer.name} ({layer.kind}) in {backend}, "
                       f"relative error {layer.errors[backend][1]:.2e} > {result.forward_tolerance:g}")
    else:
        summary.append(f"forward: every layer within {result.forward_tolerance:g}")
    not_identical = [b for b, same in result.weights_identical.items() if not same]
    if not_identical:
        summary.append(f"initial weights differ from the reference's in: {', '.join(not_identical)}")
    gaps = ", ".join(f"{b} {result.training_gap(b):.2e}" for b in others)
    summary.append(f"training: largest relative loss gap to {ref}: {gaps} (tolerance {result.training_tolerance:g})")
    lines += summary
    lines.append("forward, max relative error per layer: "
                 + "; ".join(f"{c.name} " + "/".join(f"{c.errors[b][1]:.1e}" for b in others) for c in result.layers)
                 + f"  ({'/'.join(others)})")
    lines.append("loss before each step:")
    lines.append("  step " + "".join(f"{b:>16}" for b in result.backends))
    for i in range(max(len(v) for v in result.losses.values())):
        cells = [f"{result.losses[b][i]:16.9g}" if i < len(result.losses[b]) else f"{'-':>16}"
                 for b in result.backends]
        lines.append(f"  {i + 1:4d} " + "".join(cells))
    if float64 is not None:
        lines.append("the same steps in float64 (numpy), each backend's largest relative loss gap to it: "
                     + ", ".join(f"{b} {g:.2e}" for b, g in float64.items()))
        lines.append("  (one backend far from float64 while the others are close: a bug there; every float32 "
                     "backend as far from float64 as from each other: float32 cannot resolve this spec, "
                     "see specgen.WELL_CONDITIONED)")
    for note in result.notes:
        lines.append(f"note: {note}")
    lines += ["", f"to keep it: save the text between the lines as specs/{case.name}.ms, say what it caught, add "
              "its hand-computed figures to the per-spec tables (FIGURES in tests/test_check_tutorial.py, the "
              "conformance suite's SPEC_COUNTS), and reproduce with",
              f"  modelspec crosscheck specs/{case.name}.ms --steps {case.steps} --batch {case.batch_size} "
              f"--seed {case.crosscheck_seed}",
              "-" * 72, as_regression_spec(case, "\n".join(summary)).rstrip("\n"), "-" * 72]
    return "\n".join(lines)


def error_report(case: Case, error: BaseException) -> str:
    """A crosscheck that raised: the error and the whole spec."""
    import traceback

    where = "".join(traceback.format_exception(error)[-3:]).rstrip("\n")
    return "\n".join([f"crosscheck raised: MODELSPEC_FUZZ_SEED={case.seed}, spec {case.index} ({case.steps} steps, "
                      f"batch {case.batch_size}, crosscheck seed {case.crosscheck_seed})", where, "-" * 72,
                      as_regression_spec(case, f"crosscheck raised {type(error).__name__}").rstrip("\n"), "-" * 72])


def float64_gaps(spec, result, seed: int) -> dict[str, float]:
    """Every backend's largest relative loss gap to the numpy engine in float64, on the same
    steps from the same initial weights: which backend float32 (or a bug) moved away."""
    import modelspec as ms
    from modelspec.crosscheck import _step_losses, synthetic_data, without_dropout

    run_spec = without_dropout(spec)
    start = ms.build(run_spec, backend="numpy", seed=seed).get_weights()
    model = ms.build(run_spec, backend="numpy", seed=seed, dtype=np.float64)
    if spec.loss is None:
        model.compile(loss=result.loss)
    model.set_weights(start)
    x, y = synthetic_data(ms.check(run_spec), result.loss, result.batch_size * (result.steps + 1), seed)
    b = result.batch_size
    truth = np.asarray(_step_losses(model, x[b:], y[b:], b), np.float64)
    gaps = {}
    for name, losses in result.losses.items():
        got = np.asarray(losses, np.float64)
        gaps[name] = (float(np.max(np.abs(got - truth) / np.maximum(np.abs(truth), 1e-12)))
                      if len(got) == len(truth) and len(got) else float("inf"))
    return gaps
