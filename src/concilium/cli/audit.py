"""``concilium audit RUN``: what the ensembles reveal, as tables under ``RUN/results/``.

Per-class quality of E* (``per_class``), per-class metric means (``per_class_metrics``), bias
on a non-evidence region (``bias``), the attribute cards of a multitask member (``attributes``),
and on request the anonymisation study (``anonymisation``) and the CNN ensembler's method-subset
study (``subsets``). The work is done by :func:`concilium.jobs.audit.run_audit`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from concilium.cli.app import app


@app.command("audit")
def audit_command(
    run: Path = typer.Argument(..., help="Run directory (explained, ensembled with --kind cnn)."),
    estar_source: str = typer.Option("cnn", "--estar", help="Source holding E* probabilities."),
    region: str = typer.Option("watermark", "--region", help="Bias region: watermark or outside "
                               "(everything outside the object)."),
    factor: float | None = typer.Option(None, "--factor", help="Enrichment (share / area) that "
                                        "flags a class; default 2 (watermark) or 1 (outside)."),
    sources: str | None = typer.Option(None, "--sources", help="Comma-separated sources to audit "
                                       "for bias (default: all)."),
    anonymisation: bool = typer.Option(False, "--anonymisation", help="Train classifiers on "
                                       "image x E* and E* alone; compare accuracy."),
    epochs: int = typer.Option(5, "--epochs", help="Anonymisation classifiers' epochs."),
    arch: str = typer.Option("small-cnn", "--arch", help="Anonymisation classifiers' architecture."),
    subsets: str = typer.Option("none", "--subsets", help="CNN method-subset study: none, "
                                "leave_one_out or all."),
    attribute_cards: int = typer.Option(3, "--attribute-cards", min=0, help="Images with an "
                                        "attribute card (multitask members; 0: none)."),
    attribute_method: str = typer.Option("gradcam", "--attribute-method", help="Explanation "
                                         "method of the attribute cards."),
    seed: int = typer.Option(0, "--seed", help="Seed of every training."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:<k>."),
) -> None:
    """Per-class quality, bias and anonymisation audits of a run."""
    from rich.console import Console

    from concilium.jobs.audit import run_audit

    if region not in ("watermark", "outside"):
        raise ValueError(f"--region must be watermark or outside; got {region!r}")
    if subsets not in ("none", "leave_one_out", "all"):
        raise ValueError(f"--subsets must be none, leave_one_out or all; got {subsets!r}")
    names = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
    tables = run_audit(run, estar_source=estar_source, region=region, factor=factor,  # type: ignore[arg-type]
                       bias_sources=names, anonymisation=anonymisation,
                       anonymisation_epochs=epochs, arch=arch, subsets=subsets,  # type: ignore[arg-type]
                       attribute_cards=attribute_cards, attribute_method=attribute_method,
                       seed=seed, device=device)
    console = Console()
    for name, table in tables.items():
        flagged = int(table["flagged"].sum()) if "flagged" in table else None
        note = f", {flagged} flagged" if flagged is not None else ""
        console.print(f"wrote {run / 'results' / name}.parquet ({len(table)} rows{note})")
    if "bias" in tables:
        flagged = tables["bias"][tables["bias"].flagged]
        for row in flagged.to_dict("records"):
            console.print(f"  bias: {row['source']}/{row['method']} class {row['class']!r} puts "
                          f"{row['share']:.0%} of its mass on {row['region']} "
                          f"({row['enrichment']:.1f}x uniform)")
