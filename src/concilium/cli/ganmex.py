"""``concilium ganmex``: train GANMEX counterfactual generators and inspect them.

``concilium ganmex train DATA --model MEMBER --out GEN`` trains a generator ``G(x, t)`` against
the frozen member, with a progress bar, a checkpoint and a validation line every
``--checkpoint-every`` steps, and resumes from the last checkpoint when ``GEN`` already holds one.
``concilium ganmex info GEN`` prints a generator's card and validation history. The generator is
then used as ``--baseline ganmex:GEN`` (see :func:`concilium.ganmex.parse_baseline_spec`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from concilium.cli.app import app
from concilium.cli.options import check_device
from concilium.cli.paths import DATA, GENERATOR, MEMBER, folder_of

ganmex_app = typer.Typer(
    name="ganmex",
    help="GANMEX counterfactual baselines: train a generator G(x, t), inspect it.",
    no_args_is_help=True,
)
app.add_typer(ganmex_app, name="ganmex")


@ganmex_app.command("train")
def train(
    data: Annotated[Path, typer.Argument(help="Image folder (as written by `concilium synth`).")],
    model: Annotated[Path, typer.Option("--model", help="Member folder (MODELS/m0) to explain.")],
    out: Annotated[Path, typer.Option("--out", help="Generator folder GEN (created; resumed).")],
    steps: Annotated[int | None, typer.Option(help="Generator updates in total [2000].")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Passes over the train split (instead of --steps).")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Option preset: default (finds small counterfactuals in a few "
                          "thousand steps) or reference (the reference implementation's).")
    ] = "default",
    batch_size: Annotated[int | None, typer.Option(help="Images per batch [32].")] = None,
    lr_g: Annotated[float | None, typer.Option(help="Generator Adam learning rate.")] = None,
    lr_d: Annotated[float | None, typer.Option(help="Critic Adam learning rate.")] = None,
    beta1: Annotated[float | None, typer.Option(help="Adam beta1 of both optimisers.")] = None,
    n_critic: Annotated[
        int | None, typer.Option(help="Critic updates per generator update.")
    ] = None,
    target_loss: Annotated[
        str | None, typer.Option(help="hinge (bounded margin) or ce (the reference's).")
    ] = None,
    l_cls: Annotated[float | None, typer.Option(help="Weight of the target loss.")] = None,
    l_sim: Annotated[
        float | None, typer.Option(help="Weight of |x - G(x, t)| on [0, 1] images.")
    ] = None,
    similarity: Annotated[
        str | None, typer.Option(help="l1 or group (group-sparse over 4x4 patches).")
    ] = None,
    l_rec: Annotated[
        float | None, typer.Option(help="Weight of |x - G(G(x, t), c_x)|_1.")
    ] = None,
    gp_weight: Annotated[float | None, typer.Option(help="WGAN-GP gradient penalty weight.")] = None,
    base_channels: Annotated[int | None, typer.Option(help="Generator width.")] = None,
    num_residual: Annotated[int | None, typer.Option(help="Generator residual blocks.")] = None,
    output: Annotated[
        str | None, typer.Option(help="Generator output: additive (starts at the identity), "
                                 "tanh (StarGAN, the reference's), sigmoid or residual.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batches and targets.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:<k>.")] = "cpu",
    checkpoint_every: Annotated[
        int, typer.Option(help="Validate and save every this many steps.")
    ] = 200,
    val_size: Annotated[int, typer.Option(help="Validation images (from the val split).")] = 256,
    until_success: Annotated[
        float | None,
        typer.Option(help="Stop at the first checkpoint with this target success rate (0-1]."),
    ] = None,
    restart: Annotated[
        bool, typer.Option(help="Start over instead of resuming a run found in --out.")
    ] = False,
) -> None:
    """Train a GANMEX generator G(x, t) against the frozen member MODEL on DATA's train split.

    Writes GEN/generator.safetensors, GEN/state.safetensors (resume), GEN/card.json and
    GEN/validation.csv (step, seconds, target success rate, L1, critic gap, feature distance).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from concilium._progress import progress_display
    from concilium.ganmex import GanmexOptions, card_hash, train_ganmex

    # -- cheap checks first --------------------------------------------------------------------
    if steps is not None and epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    if until_success is not None and not 0.0 < until_success <= 1.0:
        raise ValueError(f"--until-success must lie in (0, 1]; got {until_success}")
    if epochs is not None and epochs <= 0:
        raise ValueError(f"--epochs must be positive; got {epochs}")
    check_device(device)
    data, model = folder_of(data, DATA), folder_of(model, MEMBER)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} not found (make one with `concilium synth`)")
    if not (model / "card.json").is_file():
        raise FileNotFoundError(
            f"{model} is not a member folder (no card.json); pass one member, e.g. MODELS/m0"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory")
    given = dict(
        batch_size=batch_size, lr_g=lr_g, lr_d=lr_d, beta1=beta1, n_critic=n_critic,
        target_loss=target_loss, l_cls=l_cls, l_sim=l_sim, similarity=similarity, l_rec=l_rec,
        gp_weight=gp_weight, base_channels=base_channels, num_residual=num_residual,
        output=output,
    )
    options = {k: v for k, v in given.items() if v is not None}
    options |= dict(seed=seed, checkpoint_every=checkpoint_every, val_size=val_size)
    try:
        preset_options = GanmexOptions.preset(preset, **options)  # validate before loading
    except ValueError as err:
        raise ValueError(f"bad option: {err}") from None
    batch_size = preset_options.batch_size

    from concilium.data.folder import load_folder
    from concilium.models.members import load_member

    console = Console()
    with console.status("loading the member and the data"):
        classifier, card = load_member(model, device="cpu")
        dataset = load_folder(data, size=tuple(card.image_size))
    if list(card.class_names) != list(dataset.class_names):
        raise ValueError(
            f"member {model} was trained on the classes {card.class_names}, the data has "
            f"{dataset.class_names}; train the generator on the member's own data"
        )
    train_split = dataset.subset("train")
    val_split = dataset.subset("val") if "val" in dataset.splits else None
    if len(train_split) == 0:
        raise ValueError(f"{data} has no train split; add splits.csv or use `concilium synth`")
    if epochs is not None:
        steps = max(1, math.ceil(epochs * len(train_split) / batch_size))
    opts = GanmexOptions.preset(preset, steps=steps or 2000, **options)
    console.print(
        f"GANMEX for member {card.member_id} ({card.arch}, {len(card.class_names)} classes, "
        f"{card.image_size[0]}x{card.image_size[1]}): {len(train_split)} train images, "
        f"{opts.steps} steps of {opts.batch_size}, preset {preset}, output {opts.output}, "
        f"{opts.target_loss} x {opts.l_cls:g}, l_sim {opts.l_sim:g}, "
        f"l_rec {opts.l_rec:g}, lr {opts.lr_g:g}/{opts.lr_d:g}, device {device}"
    )
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss G {task.fields[g]} D {task.fields[d]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with progress_display(*columns, console=console, unit="steps") as progress:
        task = progress.add_task("train", total=opts.steps, g="-", d="-")

        def on_step(step: int, losses) -> None:
            progress.update(task, completed=step, g=f"{losses.loss_g:.2f}",
                            d=f"{losses.loss_d:+.3f}")

        final, history = train_ganmex(
            classifier, train_split.images, train_split.labels, out_dir=out,
            class_names=list(card.class_names), options=opts,
            val_images=None if val_split is None else val_split.images,
            val_labels=None if val_split is None else val_split.labels,
            classifier_card_hash=card_hash(card), classifier_name=str(model.resolve()),
            data_fingerprint=dataset.fingerprint(), device=device, resume=not restart,
            on_step=on_step, on_validation=lambda rec: progress.console.print(rec.line()),
            until_success=until_success,
        )
    if history:
        last = history[-1]
        console.print(
            f"generator at step {final.step} in {out}: target success {last.success_rate:.1%}, "
            f"L1 {last.l1:.4f}; use it with --baseline ganmex:{out} --target contrast:<t>"
        )


@ganmex_app.command("info")
def info(gen: Annotated[Path, typer.Argument(help="Generator folder GEN.")]) -> None:
    """Print a generator's card (what it was trained for) and its validation history."""
    import csv

    from rich.console import Console
    from rich.table import Table

    from concilium.ganmex import load_card
    from concilium.ganmex.checkpoint import VALIDATION_FILE

    gen = folder_of(gen, GENERATOR)
    card = load_card(gen)
    console = Console()
    console.print(
        f"{gen}: {card.num_classes} classes {card.class_names}, images "
        f"{card.image_size[0]}x{card.image_size[1]}, step {card.step} of {card.options.steps}, "
        f"{card.seconds:.0f} s, classifier {card.classifier or '?'} "
        f"(card hash {card.classifier_card_hash})"
    )
    console.print("options: " + ", ".join(f"{k}={v}" for k, v in card.options.model_dump().items()))
    path = gen / VALIDATION_FILE
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    table = Table(title="validation")
    keys = ["step", "seconds", "success_rate", "l1", "counterfactual_l1", "in_region",
            "critic_gap", "feature_distance"]
    keys = [k for k in keys if rows and rows[0].get(k) not in (None, "")]
    for key in keys:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(row[k] if k == "step" else f"{float(row[k]):.4g}" for k in keys))
    console.print(table)
