"""`modelspec crosscheck SPEC`: the same numbers in every backend, layer by layer and step by step."""

from __future__ import annotations

import argparse
import json
import sys

from . import CommandError
from ._output import console, print_table

HELP = "judge backends on one spec against float64: per-layer forward outputs, gradients and training trajectories"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--backends", default=None,
                   help="comma-separated backends to judge, one or more: each is judged against float64 "
                        "(default: every installed backend, numpy first)")
    p.add_argument("--steps", type=int, default=20, help="training steps to compare (default 20)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forward-tolerance", type=float, default=None, metavar="REL",
                   help="the forward floor: the relative error every layer may have where float32 itself "
                        "stays closer to float64 (default 1e-5)")
    p.add_argument("--gradient-tolerance", type=float, default=None, metavar="REL",
                   help="the gradient floor, relative to a layer's largest gradient (default 1e-6)")
    p.add_argument("--training-tolerance", type=float, default=None, metavar="REL",
                   help="the trajectory floor: the relative loss gap every step may have while float32 "
                        "is calm (default 1e-6)")
    p.add_argument("--device", default=None, help="passed to the backends (auto, cpu, cuda)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--explain", action="store_true",
                   help="show how each convention maps per backend, and compare nothing")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import backends as registry
    from .. import parse
    from ..crosscheck import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, TRAINING_TOLERANCE, crosscheck, explain

    if args.steps < 1 or args.batch < 1:
        raise CommandError("--steps and --batch must be at least 1", code=2)
    spec = parse(Path(args.spec))
    names = _backends(args.backends, registry)
    if args.explain:  # explaining runs nothing, so it cannot fail on the comparison
        rows = explain(spec, names)
        if args.json:
            print(json.dumps({"ok": True, "model": spec.name, "explain": [{"topic": t, **per} for t, per in rows]},
                             indent=2))
        else:
            _explain(rows, names)
        return 0
    options = {"device": args.device} if args.device else {}
    try:
        result = crosscheck(spec, names, steps=args.steps, batch_size=args.batch, seed=args.seed,
                            forward_tolerance=args.forward_tolerance or FORWARD_TOLERANCE,
                            gradient_tolerance=args.gradient_tolerance or GRADIENT_TOLERANCE,
                            training_tolerance=args.training_tolerance or TRAINING_TOLERANCE, **options)
    except registry.BackendError as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps({"ok": result.ok, **result.to_dict()}, indent=2))
    else:
        _print(result)
    return 0 if result.ok else 1


def _backends(option: str | None, registry) -> list[str]:
    if option:
        names = [n.strip() for n in option.split(",") if n.strip()]
        for n in names:
            try:
                registry.get(n)
            except registry.BackendError as e:
                raise CommandError(str(e)) from None
        if len(set(names)) != len(names):
            raise CommandError("--backends names a backend twice", code=2)
        return names
    installed = registry.installed()
    return sorted(installed, key=lambda n: (n != "numpy", n))


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}"


def _layer_table(title: str, rows, backends: list[str], allowed: bool):
    """One row per layer: float32's own error, what a backend may have, each backend's error
    (red beyond it). Layer names are never cut: the number columns are narrow."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("layer", no_wrap=True, min_width=max((len(f"{r.name} ({r.kind})") for r in rows), default=5))
    for column in ("float32\nitself", *(["allowed"] if allowed else []), *backends):
        table.add_column(column, justify="right", no_wrap=True, min_width=8)
    for r in rows:
        cells = []
        for b in backends:
            rel = r.errors[b][1]
            cells.append(_fmt(rel) if r.excess.get(b, 0) <= 1 else f"[bold red]{_fmt(rel)}[/]")
        table.add_row(f"{r.name} ({r.kind})", _fmt(r.noise), *([_fmt(r.band)] if allowed else []), *cells)
    return table


def _print(result) -> None:
    from rich.table import Table


    con = console()
    con.print(f'Crosscheck of "{result.spec.name}": {", ".join(result.backends)} against the numpy engine in '
                  f"float64, with float32's own error measured by the numpy engine in float32; batch "
                  f"{result.batch_size}, loss {result.loss}")
    for note in result.notes:
        con.print(f"  note: {note}")
    for name, same in result.weights_identical.items():
        if not same:
            con.print(f"  [red]{name} does not hold the reference's initial weights[/]")
    print_table(con, _layer_table("Forward, one batch: relative error against float64", result.layers,
                               result.backends, allowed=True))
    if result.gradients:
        print_table(con, _layer_table("Gradients, one step of plain SGD: relative error against float64 "
                                   "(allowed: 10x float32's own error at each element)", result.gradients,
                                   result.trained, allowed=False))
    steps = Table(title=f"Training: loss before each of {result.steps} steps", title_justify="left")
    for column in ("step", "float64", "float32\nitself", "allowed", *result.trained):
        steps.add_column(column, justify="right", no_wrap=True)
    noise, bands = result.noise, result.bands
    gaps = {b: result.gaps(b) for b in result.trained}
    for i in range(len(result.float64)):
        cells = []
        for b in result.trained:
            value = f"{result.losses[b][i]:.7f}" if i < len(result.losses[b]) else "-"
            cells.append(value if gaps[b][i] <= bands[i] else f"[bold red]{value}[/]")
        steps.add_row(str(i + 1), f"{result.float64[i]:.7f}", _fmt(noise[i]), _fmt(bands[i]), *cells)
    if result.trained:
        print_table(con, steps)
    rates = _rates_table(result.learning_rates)
    if rates is not None:
        print_table(con, rates)
    con.print(f"Trajectory: {result.regime()}")
    if result.advice():
        con.print(f"  {result.advice()}")
    for b in result.backends:
        con.print(f"{b}: {_verdict(result, b)}")
    con.print("[bold green]OK[/]: every backend agrees with float64 as closely as float32 allows"
                  if result.ok else "[bold red]FAILED[/]: a backend differs from float64 by more than float32 explains")
    sys.stdout.flush()


RATE_TOLERANCE = 1e-6  # relative: a rate a few float32 ulps from modelspec.schedules' is the same rate


def _rates_table(rates: dict):
    """The learning rate of each step side by side: modelspec.schedules', Keras's schedule
    object's and each engine's (red where one is farther from modelspec's than a few ulps);
    None for a constant rate every engine used."""
    from rich.table import Table

    ours = rates.get("modelspec", [])
    others = {k: v for k, v in rates.items() if k != "modelspec"}

    def differs(value, reference) -> bool:
        return value is not None and abs(value - reference) > RATE_TOLERANCE * abs(reference)

    constant = len(set(ours)) <= 1 and "keras_schedule" not in rates
    if constant and not any(differs(v, r) for values in others.values() for v, r in zip(values, ours)):
        return None
    table = Table(title="Learning rate of each step: modelspec.schedules, Keras's schedule object, each engine",
                  title_justify="left")
    names = ["modelspec", *others]
    for column in ("step", *(n.replace("keras_schedule", "keras\nschedule") for n in names)):
        table.add_column(column, justify="right", no_wrap=True)
    for i, reference in enumerate(ours):
        cells = []
        for name in names:
            values = rates[name]
            value = values[i] if i < len(values) else None
            text = "-" if value is None else f"{value:.8g}"
            cells.append(f"[bold red]{text}[/]" if differs(value, reference) else text)
        table.add_row(str(i + 1), *cells)
    return table


def _verdict(result, backend: str) -> str:
    """One backend's verdict, in words: where it first left what float32 explains."""
    forward = next((r for r in result.layers if r.excess.get(backend, 0) > 1 or r.excess.get(backend) != r.excess.get(backend)), None)
    if forward is not None:
        return (f"[bold red]differs[/] in the forward pass at {forward.name} ({forward.kind}): "
                f"{_fmt(forward.errors[backend][1])} from float64, where float32 allows {_fmt(forward.band)}")
    if backend in result.forward_only:
        worst = max((r.errors[backend][1] for r in result.layers), default=0.0)
        return f"agrees in the forward pass (largest layer error {_fmt(worst)}); forward only: it does not train"
    gradient = next((r for r in result.gradients if not r.excess.get(backend, 0) <= 1), None)
    if gradient is not None:
        return (f"[bold red]differs[/] in the gradient of {gradient.name} ({gradient.kind}): "
                f"{gradient.excess[backend] * 10:.3g}x float32's own error at an element (10x allowed)")
    step = result.left_band_at(backend)
    if step is not None:
        return (f"[bold red]differs[/] from step {step}: {_fmt(result.gaps(backend)[step - 1])} from float64, "
                f"where float32 allows {_fmt(result.bands[step - 1])}")
    return f"agrees (largest loss gap to float64 {_fmt(result.training_gap(backend))})"


def _explain(rows, backends: list[str]) -> None:
    from rich.table import Table

    shown = [b for b in backends if b != "keras"]
    table = Table(title="How each backend realises Keras's meaning", show_lines=True)
    table.add_column("convention")
    table.add_column("Keras (the meaning)")
    for b in shown:
        table.add_column(b)
    for topic, per in rows:
        table.add_row(topic, per["keras"], *(per[b] for b in shown))
    console().print(table)
