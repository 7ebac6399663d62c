"""``concilium train DATA --out MODELS``: train (or resume) an ensemble of classifiers."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from concilium.cli.app import app
from concilium.cli.options import split_names
from concilium.cli.paths import DATA, folder_of


class DiversityChoice(StrEnum):
    head = "head"
    seed = "seed"
    bootstrap = "bootstrap"
    arch = "arch"


class FinetuneChoice(StrEnum):
    all = "all"
    head = "head"


class DeviceChoice(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def train(
    data: Annotated[
        Path, typer.Argument(help="Folder dataset (DATA/images/<label>/<id>.png ...).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Models folder: OUT/m0, OUT/m1, ...")],
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture of every member: small-cnn (default), resnet18, resnet18-small, "
            "vgg11, vgg11-small, timm:<name>, torchvision:<name>."
        ),
    ] = None,
    members: Annotated[int, typer.Option(help="Number of members.")] = 11,
    diversity: Annotated[
        DiversityChoice, typer.Option(help="How members differ: head, seed, bootstrap or arch.")
    ] = DiversityChoice.head,
    archs: Annotated[
        str | None,
        typer.Option(help="Committee for --diversity arch, comma-separated (small-cnn,resnet18)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs from scratch (the backbone, for head).")] = 10,
    finetune: Annotated[
        FinetuneChoice, typer.Option(help="head diversity: fine-tune all weights or the heads.")
    ] = FinetuneChoice.all,
    finetune_epochs: Annotated[
        int | None, typer.Option(help="head diversity: fine-tuning epochs (default epochs // 5).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak one-cycle learning rate (AdamW).")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Base seed (member i uses seed + 1 + i).")] = 0,
    size: Annotated[
        int | None, typer.Option(help="Resize images (and masks) to SIZE x SIZE.")
    ] = None,
    split_seed: Annotated[
        int, typer.Option(help="Seed of the train/val/test split when DATA has no splits.csv.")
    ] = 0,
    attributes: Annotated[
        bool,
        typer.Option(
            "--attributes/--no-attributes",
            help="Multitask: also train an attribute head on DATA/attributes.csv.",
        ),
    ] = False,
    attribute_weight: Annotated[float, typer.Option(help="Weight of the attribute loss.")] = 1.0,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Random horizontal flips.")
    ] = False,
    device: Annotated[DeviceChoice, typer.Option(help="cpu or cuda.")] = DeviceChoice.cpu,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """Train an ensemble of classifiers on a folder dataset; resumes an interrupted run."""
    from rich.console import Console
    from rich.table import Table

    from concilium.data.folder import load_folder
    from concilium.models.ensembles import train_ensemble

    committee = split_names(archs, option="--archs", example="small-cnn,resnet18")
    dataset = load_folder(folder_of(data, DATA), size=size, seed=split_seed)
    cards = train_ensemble(
        dataset,
        out=out,
        arch=arch,
        members=members,
        diversity=diversity.value,  # type: ignore[arg-type]
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        archs=committee,
        attributes=attributes,
        attribute_weight=attribute_weight,
        finetune=finetune.value,  # type: ignore[arg-type]
        finetune_epochs=finetune_epochs,
        augment=augment,
        device=device.value,
        progress=progress,
    )
    table = Table(title=f"{len(cards)} members in {out}")
    table.add_column("member")
    table.add_column("arch")
    table.add_column("seed", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("val accuracy", justify="right")
    if attributes:
        table.add_column("val attribute acc.", justify="right")
    for card in cards:
        row = [
            card.member_id,
            card.arch,
            str(card.seed),
            str(card.epochs),
            "-" if card.val_accuracy is None else f"{card.val_accuracy:.3f}",
        ]
        if attributes:
            acc = card.val_attribute_accuracy
            row.append("-" if acc is None else f"{acc:.3f}")
        table.add_row(*row)
    accs = [c.val_accuracy for c in cards if c.val_accuracy is not None]
    console = Console()
    console.print(table)
    if accs:
        console.print(
            f"mean val accuracy {sum(accs) / len(accs):.3f} (min {min(accs):.3f}, "
            f"max {max(accs):.3f})"
        )
