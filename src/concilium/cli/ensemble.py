"""``concilium ensemble RUN --kind ...``: ensemble a run's stored maps into new store sources.

The work is done by :func:`concilium.jobs.ensemble.run_ensemble`; this module only parses
options, so every ensemble is written through the same entry API as the members and
``concilium evaluate`` scores it like any member.
"""

from __future__ import annotations

from pathlib import Path

import typer

from concilium.cli.app import app


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("an empty comma-separated list was given; leave the option out instead")
    return items


@app.command("ensemble")
def ensemble_command(
    run: Path = typer.Argument(..., help="Run directory made by `concilium explain`."),
    kind: str = typer.Option(
        ..., "--kind", help="ens-avg, ens-logit, consensus, aggregate, weighted, krr or cnn."
    ),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated methods "
                                       "(default: every method all members have)."),
    members: str | None = typer.Option(None, "--members", help="Comma-separated member ids."),
    source: str | None = typer.Option(None, "--source", help="Output source name (default: "
                                      "the kind, e.g. ens-avg; ens-avg:head to keep several)."),
    from_source: str | None = typer.Option(None, "--from", help="Input source of method "
                                           "ensembles (aggregate/weighted/krr/cnn); default m0."),
    normalisation: str = typer.Option("max_abs", "--normalisation", help="max_abs, min_max, l1, "
                                      "l2, z_score, rank, second_moment, median_iqr or none."),
    reducer: str = typer.Option("mean", "--reducer", help="mean, median, min, max, max_abs, "
                                "trimmed_mean or rank_mean."),
    absolute: bool | None = typer.Option(None, "--abs/--signed", help="Use |map| (default: "
                                         "--abs for consensus, --signed otherwise)."),
    vote: str = typer.Option("mean", "--vote", help="consensus: mean or rank voting."),
    similarity: str = typer.Option("cosine", "--similarity", help="consensus: cosine, pearson "
                                   "or spearman."),
    all_images: bool = typer.Option(False, "--all-images", help="consensus: score on every "
                                    "image, not only those every member gets right."),
    localisation_metric: str = typer.Option("auc", "--localisation-metric",
                                            help="consensus: members' localisation metric."),
    weight_metric: list[str] | None = typer.Option(None, "--weight-metric", help="weighted: a "
                                                   "metric whose scores set the weights "
                                                   "(repeatable; default relevance_mass)."),
    folds: int = typer.Option(5, "--folds", help="krr: out-of-fold image folds."),
    alpha: float = typer.Option(1.0, "--alpha", help="krr: ridge regularisation."),
    positional: bool = typer.Option(False, "--positional", help="krr: add pixel positions."),
    epochs: int = typer.Option(60, "--epochs", help="cnn: most training epochs."),
    patience: int = typer.Option(10, "--patience", help="cnn: early-stopping patience."),
    with_image: bool = typer.Option(False, "--with-image", help="cnn: also read the image."),
    loss: str = typer.Option("dice", "--loss", help="cnn: dice or dice_bce."),
    ensembler: Path | None = typer.Option(None, "--ensembler", help="cnn: apply this trained "
                                          "ensembler instead of training."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:<k>."),
) -> None:
    """Ensemble a run's explanations and store the result as a new source."""
    from rich.console import Console

    from concilium.ensemble.cnn import CNNTrainConfig
    from concilium.jobs.ensemble import ENSEMBLERS, EnsembleOptions, run_ensemble

    ENSEMBLERS.get(kind)  # unknown kind: error listing the valid ones, before any work
    cnn = CNNTrainConfig(epochs=epochs, patience=patience, with_image=with_image, loss=loss,
                         normalisation=normalisation, seed=seed)
    options = EnsembleOptions(
        methods=_split_list(methods), members=_split_list(members), source=source,
        from_source=from_source, normalisation=normalisation, reducer=reducer, absolute=absolute,
        vote=vote, similarity=similarity, correct_only=not all_images,
        localisation_metric=localisation_metric,
        weight_metrics=list(weight_metric) if weight_metric else ["relevance_mass"],
        folds=folds, alpha=alpha, positional=positional, cnn=cnn,
        ensembler=str(ensembler) if ensembler else None, seed=seed, device=device,
    )
    result = run_ensemble(run, kind, options)
    console = Console()
    for entry in result.entries:
        console.print(f"wrote [bold]{entry.source}[/]/{entry.method}/{entry.params_hash} "
                      f"({entry.n} maps)")
    for name in result.tables:
        console.print(f"wrote {run / 'results' / name}.parquet")
