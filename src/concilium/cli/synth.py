"""`concilium synth`: generate the ground-truth bird benchmark and write it as a folder dataset."""

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from concilium._progress import progress_display
from concilium.cli.app import app

_OPTIONS = {"num_classes": "classes"}


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (folder dataset format).")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 1000,
    size: Annotated[int, typer.Option(help="Image height and width, 32 to 224.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    classes: Annotated[int, typer.Option(help="Number of classes, 2 to 15.")] = 8,
    clutter: Annotated[int, typer.Option(help="Distractor parts per image.")] = 0,
    rotation: Annotated[float, typer.Option(help="Largest bird rotation, degrees.")] = 30.0,
    noise: Annotated[float, typer.Option(help="Pixel noise standard deviation.")] = 0.03,
    watermark_class: Annotated[
        int | None, typer.Option(help="Class that carries a spurious watermark.")
    ] = None,
    watermark_rate: Annotated[
        float | None, typer.Option(help="Share of that class's images with the watermark [0.8].")
    ] = None,
    rare_class: Annotated[int | None, typer.Option(help="Class made rare.")] = None,
    rare_fraction: Annotated[
        float | None, typer.Option(help="Probability of the rare class [0.02].")
    ] = None,
    label_noise: Annotated[
        float, typer.Option(help="Probability a label is replaced by another class.")
    ] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset already in OUT.")] = False,
) -> None:
    """Generate the ground-truth benchmark and write it to OUT as a folder dataset.

    Writes images/, masks/ (object), parts/<set>/ (evidence, body, head, beak, wings, tail,
    watermark, clutter), attributes.csv, splits.csv and card.json (generator parameters).
    """
    from concilium.data.folder import write_folder
    from concilium.data.synthetic import SynthConfig, generate

    knobs = {
        "n": n,
        "size": size,
        "seed": seed,
        "num_classes": classes,
        "clutter": clutter,
        "rotation": rotation,
        "noise": noise,
        "label_noise": label_noise,
        "watermark_class": watermark_class,
        "watermark_rate": watermark_rate,
        "rare_class": rare_class,
        "rare_fraction": rare_fraction,
    }
    try:
        config = SynthConfig(**{k: v for k, v in knobs.items() if v is not None})
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(x) for x in e["loc"])
            option = _OPTIONS.get(field, field.replace("_", "-"))
            where = f"--{option}: " if field else ""
            problems.append(where + e["msg"].removeprefix("Value error, "))
        raise ValueError("; ".join(problems)) from None
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ValueError(f"{out} is not an empty folder; choose a new folder or pass --overwrite")
    console = Console()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with progress_display(*columns, console=Console(stderr=True), transient=True,
                          unit="images") as bar:
        task = bar.add_task("generating", total=config.n)
        dataset = generate(config, progress=lambda done, total: bar.update(task, completed=done))
        task = bar.add_task("writing", total=config.n)
        write_folder(
            dataset,
            out,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    table = Table(title=f"{config.n} images of {size}x{size} written to {out}")
    table.add_column("class")
    table.add_column("name")
    for split in ("train", "val", "test"):
        table.add_column(split, justify="right")
    table.add_column("watermarked", justify="right")
    counts = Counter(zip(dataset.labels.tolist(), dataset.splits, strict=True))
    marked = Counter(dataset.labels[dataset.parts["watermark"].flatten(1).any(1)].tolist())
    for c, name in enumerate(dataset.class_names):
        table.add_row(
            str(c),
            name,
            *(str(counts[(c, s)]) for s in ("train", "val", "test")),
            str(marked[c]),
        )
    console.print(table)
    noisy = len(dataset.card["noisy_ids"])
    if noisy:
        console.print(f"{noisy} labels flipped by label noise (ids in card.json)")
