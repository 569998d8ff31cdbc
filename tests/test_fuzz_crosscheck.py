"""Differential fuzzing (issue 7): random valid specs through every installed backend.

Each spec of the campaign (tests/fuzz_corpus.py: 100 specs from a fixed seed by default;
MODELSPEC_FUZZ_SEED and MODELSPEC_FUZZ_N run another) goes through `crosscheck` with
every installed backend, numpy first, at the library's tolerances: every layer's forward
output within 1e-5 relative of numpy's, and every step's training loss within 1e-4. The
same specs go through the static checker against the models real Keras builds. A failure
prints the whole spec, ready to be saved in specs/ as a regression case, with the first
diverging layer and backend and every backend's losses per step.

The regression cases found so far (specs/regression_*.ms) are crosschecked here too, at
`modelspec crosscheck`'s defaults.
"""

from __future__ import annotations

import pytest

import modelspec as ms
from corpus import SPEC_FILES
from fuzz_corpus import N, SEED, cases, chunks, error_report, failure_report, installed_backends
from modelspec.crosscheck import crosscheck

BACKENDS = installed_backends()
CASES = cases()
CHUNKS = chunks()
REGRESSIONS = [p for p in SPEC_FILES if p.stem.startswith("regression_")]

needs_two = pytest.mark.skipif(len(BACKENDS) < 2, reason=f"crosscheck needs two backends; installed: {BACKENDS}")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and torch's pool fights TensorFlow's for two
    cores: with the default threads a tiny model's step takes ~20x longer in a process that
    has TensorFlow too. (The tolerances leave room for any order of summation.)"""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ids(rng: range) -> str:
    return f"seed{SEED}-specs{rng.start}-{rng.stop - 1}"


@needs_two
@pytest.mark.parametrize("indices", CHUNKS, ids=[_ids(c) for c in CHUNKS])
def test_random_specs_agree_across_backends(indices):
    failures = []
    for i in indices:
        case = CASES[i]
        spec = ms.parse(case.text)
        try:
            result = crosscheck(spec, BACKENDS, steps=case.steps, batch_size=case.batch_size,
                                seed=case.crosscheck_seed)
        except Exception as e:
            failures.append(error_report(case, e))
            continue
        if not result.ok:
            failures.append(failure_report(case, result))
    assert not failures, f"{len(failures)} of {len(indices)} specs disagree\n\n" + "\n\n".join(failures)


@pytest.mark.keras
@pytest.mark.parametrize("indices", CHUNKS, ids=[_ids(c) for c in CHUNKS])
def test_random_specs_check_as_keras_builds_them(indices):
    pytest.importorskip("keras")
    import keras_reference as kr

    for i in indices:
        text = CASES[i].text
        _, _, pairs = kr.checker_and_keras(ms.parse(text))
        for mine, keras_s in pairs:
            assert mine == keras_s, f"MODELSPEC_FUZZ_SEED={SEED}, spec {i}:\n{text}"


@needs_two
@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression_cases_agree_across_backends(path):
    result = crosscheck(ms.parse(path), BACKENDS)  # `modelspec crosscheck`'s defaults
    assert result.ok, result.to_dict()


def test_the_campaign():
    """Reproducible: the same texts from the same seed, and enough of them."""
    assert [c.text for c in cases(5)] == [c.text for c in cases(5)]
    assert len(CASES) == N and sum(map(len, CHUNKS)) == N
    if SEED == 7 and N == 100:  # the suite's own campaign: every kind of layer, optimizer and loss
        specs = [ms.parse(c.text) for c in CASES]
        assert {layer.kind for s in specs for layer in s.layers} == set(ms.ir.LAYER_CLASSES)
        assert {s.optimizer.name for s in specs if s.optimizer} == set(ms.ir.OPTIMIZERS)
        assert {s.loss.name for s in specs} == set(ms.ir.LOSSES)
        assert sum(c.steps == 20 for c in CASES) == 20


def test_a_failure_report_is_a_regression_case():
    """The report names the first wrong layer and backend and the step a trajectory left the
    noise band, shows the losses beside float64's, and carries the whole spec, renamed after
    its file, which parses to the same model."""
    from modelspec.crosscheck import CrossCheck, LayerComparison

    case = cases(3)[2]
    spec = ms.parse(case.text)
    result = CrossCheck(spec, "numpy", ["numpy", "torch"], case.batch_size, 2, "mse", 1e-5, 1e-6,
                        weights_identical={"numpy": True, "torch": True},
                        layers=[LayerComparison("dense", "dense", {"numpy": (0.0, 0.0), "torch": (1.0, 0.5)},
                                                excess={"numpy": 0.0, "torch": 5e4})],
                        losses={"numpy": [1.0, 0.9], "torch": [1.0, 0.8]}, float64=[1.0, 0.9],
                        noise_runs=[[1.0, 0.9]])
    report = failure_report(case, result)
    assert "forward: first divergence at layer dense (dense) in torch, relative error 5.00e-01" in report
    assert "training: torch left the noise band at step 2 (1.11e-01 from float64, 1.00e-06 allowed)" in report
    assert "trajectory: calm" in report
    kept = report.split("-" * 72)[1].strip("\n")
    again = ms.parse(kept)
    assert again.name == case.name
    assert again.model_dump(exclude={"name"}) == spec.model_dump(exclude={"name"})
