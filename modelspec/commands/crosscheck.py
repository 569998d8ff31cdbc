"""`modelspec crosscheck SPEC`: the same numbers in every backend, layer by layer and step by step."""

from __future__ import annotations

import argparse
import json
import sys

from . import CommandError

HELP = "compare backends on one spec: per-layer forward errors and training-loss trajectories"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--backends", default=None,
                   help="comma-separated, the first is the reference (default: every installed backend, "
                        "numpy first)")
    p.add_argument("--steps", type=int, default=20, help="training steps to compare (default 20)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forward-tolerance", type=float, default=None, metavar="REL",
                   help="relative forward tolerance (default 1e-5)")
    p.add_argument("--training-tolerance", type=float, default=None, metavar="REL",
                   help="relative tolerance on the per-step losses (default 1e-4)")
    p.add_argument("--device", default=None, help="passed to the backends (auto, cpu, cuda)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--explain", action="store_true", help="show how each convention maps per backend")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import backends as registry
    from .. import parse
    from ..crosscheck import FORWARD_TOLERANCE, TRAINING_TOLERANCE, crosscheck, explain

    if args.steps < 1 or args.batch < 1:
        raise CommandError("--steps and --batch must be at least 1", code=2)
    spec = parse(Path(args.spec))
    names = _backends(args.backends, registry)
    if len(names) < 2:
        given = f"--backends names only {names[0]}" if args.backends else f"only {', '.join(names) or 'none'} installed"
        raise CommandError(f"crosscheck needs at least two backends; {given} (installed: "
                           f"{', '.join(registry.installed()) or 'none'})")
    options = {"device": args.device} if args.device else {}
    try:
        result = crosscheck(spec, names, steps=args.steps, batch_size=args.batch, seed=args.seed,
                            forward_tolerance=args.forward_tolerance or FORWARD_TOLERANCE,
                            training_tolerance=args.training_tolerance or TRAINING_TOLERANCE, **options)
    except registry.BackendError as e:
        raise CommandError(str(e)) from None
    if args.json:
        doc = {"ok": result.ok, **result.to_dict()}
        if args.explain:
            doc["explain"] = [{"topic": t, **per} for t, per in explain(spec, names)]
        print(json.dumps(doc, indent=2))
    else:
        _print(result, explain(spec, names) if args.explain else None)
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


def _print(result, explanation) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    ref, others = result.reference, [b for b in result.backends if b != result.reference]
    console.print(f'Crosscheck of "{result.spec.name}": reference {ref}, batch {result.batch_size}, '
                  f"loss {result.loss}")
    for note in result.notes:
        console.print(f"  note: {note}")
    for name, same in result.weights_identical.items():
        if not same:
            console.print(f"  [red]{name} does not hold the reference's initial weights[/]")
    table = Table(title=f"Forward, one batch: error against {ref} (relative to the layer's largest value)")
    # layer names are never cut: the number columns are narrow, with two-line headers
    table.add_column("layer", no_wrap=True, min_width=max((len(f"{l.name} ({l.kind})") for l in result.layers), default=5))
    for b in others:
        table.add_column(f"{b}\nmax abs", justify="right", no_wrap=True, min_width=8)
        table.add_column(f"{b}\nmax rel", justify="right", no_wrap=True, min_width=8)
    for layer in result.layers:
        cells = []
        for b in others:
            a, r = layer.errors[b]
            style = "" if r <= result.forward_tolerance else "bold red"
            cells += [_fmt(a), f"[{style}]{_fmt(r)}[/]" if style else _fmt(r)]
        table.add_row(f"{layer.name} ({layer.kind})", *cells)
    console.print(table)
    first = result.first_divergence
    if first is None:
        console.print(f"Every layer agrees within {result.forward_tolerance:g}.")
    else:
        console.print(f"[bold red]First divergence: {first[0].name} ({first[0].kind}) in {first[1]}, "
                      f"relative error {_fmt(first[0].errors[first[1]][1])} > {result.forward_tolerance:g}[/]")
    steps = Table(title=f"Training: loss before each of {result.steps} steps")
    steps.add_column("step", justify="right")
    for b in result.backends:
        steps.add_column(b, justify="right")
    for i in range(result.steps):
        steps.add_row(str(i + 1), *(f"{result.losses[b][i]:.7f}" if i < len(result.losses[b]) else "-"
                                    for b in result.backends))
    console.print(steps)
    for b in others:
        gap = result.training_gap(b)
        verdict = "ok" if gap <= result.training_tolerance else "[bold red]exceeds[/]"
        console.print(f"Largest relative gap, {b} vs {ref}: {_fmt(gap)} "
                      f"(tolerance {result.training_tolerance:g}) {verdict}")
    if explanation:
        shown = [b for b in result.backends if b != "keras"]
        table = Table(title="How each backend realises Keras's meaning", show_lines=True)
        table.add_column("convention")
        table.add_column("Keras (the meaning)")
        for b in shown:
            table.add_column(b)
        for topic, per in explanation:
            table.add_row(topic, per["keras"], *(per[b] for b in shown))
        console.print(table)
    console.print("[bold green]OK[/]" if result.ok else "[bold red]FAILED[/]: tolerances exceeded")
    sys.stdout.flush()
