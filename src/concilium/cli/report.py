"""``concilium report RUN``: write ``RUN/report.html`` and ``RUN/summary.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from concilium.cli.app import app


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="The run directory (the --out of a run).")],
    title: Annotated[str | None, typer.Option(help="Report title.")] = None,
    gallery_images: Annotated[int, typer.Option(min=0, help="Test images in the gallery.")] = 4,
    gallery_members: Annotated[int, typer.Option(min=0, help="Members shown per method.")] = 3,
    members_view: Annotated[
        str, typer.Option(help="Member rows of the metric table: pooled, each or both.")
    ] = "pooled",
) -> None:
    """Write the self-contained HTML report of a run and its JSON summary (reads only; the
    attribute cards are written by `concilium audit`)."""
    from rich.console import Console

    from concilium.report import write_report

    view: Literal["pooled", "each", "both"] = members_view  # type: ignore[assignment]
    path = write_report(run_dir, title=title, gallery_images=gallery_images,
                        gallery_members=gallery_members, members_view=view)
    Console().print(f"report: [bold]{path}[/]  summary: {path.parent / 'summary.json'}")
