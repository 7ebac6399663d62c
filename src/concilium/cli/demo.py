"""``concilium demo [--quick] [--out DIR]``: the embedded benchmark experiment, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from concilium.cli.app import app


@app.command("demo")
def demo_command(
    quick: Annotated[
        bool, typer.Option("--quick", help="A small smoke-test version (about 2 minutes).")
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/demo"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and its estimated cost; do nothing.")
    ] = False,
) -> None:
    """Benchmark with a rare and a watermark class, an 11-member head ensemble and a
    mixed-architecture committee, seven methods, every ensemble, every metric family, audits,
    report; prints the headline findings."""
    from rich.console import Console
    from rich.markup import escape

    from concilium.metrics.claims import Finding
    from concilium.pipeline import demo_config, format_plan, plan, run

    config = demo_config(quick=quick)
    if dry_run:
        typer.echo(format_plan(plan(config, out)))
        return
    run(config, out)
    console = Console()
    summary = json.loads((out / "summary.json").read_text())
    console.print(f"\n[bold]report:[/] {out / 'report.html'}")
    console.print("[bold]headline findings[/]")
    for f in map(Finding.from_dict, summary["findings"]):
        verdict = {"held": "[green]held[/]", "not held": "[red]not held[/]"}.get(
            f.verdict, f"[dim]{f.verdict}[/]")
        numbers = f"\n    {escape(f.numbers())}" if f.numbers() else ""
        console.print(f"- {escape(f.claim)}: {verdict}{numbers}\n    {escape(f.detail)}",
                      highlight=False)
