"""The differential-fuzzing corpus (issue 7): random valid specs, reproducible, and how a
failing one is reported so that it can become a regression case in specs/.

    MODELSPEC_FUZZ_SEED=123 MODELSPEC_FUZZ_N=1000 pytest tests/test_fuzz_crosscheck.py -n 2

runs a different (or bigger) campaign than the fixed one the suite runs by default.
Specs come from tests/specgen.py with `avoid_framework_bugs=True` (no construction on which
a framework computes wrong numbers; specgen.FRAMEWORK_BUGS says which) and small sizes,
since Keras traces a graph per model. Specs whose float32 training drifts from float64 are
kept: crosscheck judges each backend against float32's own spread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import specgen

DEFAULT_SEED = 7
DEFAULT_N = 100
SEED = int(os.environ.get("MODELSPEC_FUZZ_SEED", DEFAULT_SEED))
N = int(os.environ.get("MODELSPEC_FUZZ_N", DEFAULT_N))
CHUNK = 10  # specs per test, so that pytest-xdist can spread a campaign

# Small: Keras builds and traces every model (~0.3 s each), and the whole campaign has a
# budget of about 100 s on two cores.
GENERATOR = dict(max_layers=4, max_image=8, max_channels=2, avoid_framework_bugs=True)
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


def failure_report(case: Case, result) -> str:
    """Everything needed to see and keep a failing case: where each backend left what float32
    explains (the forward layer, the gradient, or the step), the trajectory's regime, every
    loss per step beside float64's, and the whole spec."""
    lines = [f"crosscheck failed: MODELSPEC_FUZZ_SEED={case.seed}, spec {case.index} "
             f"({case.steps} steps, batch {case.batch_size}, crosscheck seed {case.crosscheck_seed}; "
             f"judged against the numpy engine in float64)"]
    summary = []
    for label, first in (("forward", result.first_divergence), ("gradient", result.first_gradient_divergence)):
        if first is not None:
            layer, backend = first
            summary.append(f"{label}: first divergence at layer {layer.name} ({layer.kind}) in {backend}, "
                           f"relative error {layer.errors[backend][1]:.2e}, {layer.excess[backend]:.3g}x what "
                           "float32 explains")
    not_identical = [b for b, same in result.weights_identical.items() if not same]
    if not_identical:
        summary.append(f"initial weights differ from the reference's in: {', '.join(not_identical)}")
    for b in result.trained:
        step = result.left_band_at(b)
        if step is not None:
            summary.append(f"training: {b} left the noise band at step {step} ({result.gaps(b)[step - 1]:.2e} from "
                           f"float64, {result.bands[step - 1]:.2e} allowed)")
    summary.append(f"trajectory: {result.regime()}")
    lines += summary
    lines.append("forward, max relative error per layer against float64: "
                 + "; ".join(f"{c.name} " + "/".join(f"{c.errors[b][1]:.1e}" for b in result.backends)
                             for c in result.layers) + f"  ({'/'.join(result.backends)})")
    lines.append("loss before each step:")
    lines.append("  step " + "".join(f"{b:>16}" for b in ["float64", *result.trained]))
    for i, truth in enumerate(result.float64):
        cells = [f"{result.losses[b][i]:16.9g}" if i < len(result.losses[b]) else f"{'-':>16}"
                 for b in result.trained]
        lines.append(f"  {i + 1:4d} {truth:16.9g}" + "".join(cells))
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
