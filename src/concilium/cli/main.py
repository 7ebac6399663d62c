"""Console entry point: ``concilium``. Each command lives in its own module of this package,
imported when the command is used (:class:`concilium.cli.app.LazyGroup`)."""

from __future__ import annotations

import sys

from concilium.cli.app import app  # commands are imported when used (see LazyGroup)


@app.callback()
def _root() -> None:
    """Trustworthy saliency explanations: compute, ensemble and measure them."""


def main() -> None:
    """Run the CLI; a ``ValueError``/``TypeError``/``FileNotFoundError`` from our own checks (or
    an ``ImportError`` naming a missing extra) is printed as one clear line, not a stack trace."""
    try:
        code = app(standalone_mode=False)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    except SystemExit as err:
        sys.exit(err.code)
    except Exception as err:
        # typer/click usage errors (typer bundles its own click): show them the click way.
        if hasattr(err, "show") and hasattr(err, "exit_code"):
            err.show()
            sys.exit(err.exit_code)
        if type(err).__name__ == "Abort":
            sys.exit(1)
        raise
    # Without standalone mode, click returns the code of a ``typer.Exit`` instead of exiting.
    if isinstance(code, int) and not isinstance(code, bool):
        sys.exit(code)

if __name__ == "__main__":
    main()
