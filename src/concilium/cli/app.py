"""The typer application every command module adds its commands to."""

import typer

app = typer.Typer(
    name="concilium",
    help="Trustworthy saliency explanations: compute, ensemble and measure them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
