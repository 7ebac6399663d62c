"""Console entry point: ``concilium``. Each command lives in its own module of this package,
imported when the command is used (:class:`concilium.cli.app.LazyGroup`)."""

from __future__ import annotations

import sys

from concilium.cli.app import app  # commands are imported when used (see LazyGroup)


@app.callback()
def _root() -> None:
    """Trustworthy saliency explanations: compute, ensemble and measure them."""


#: A path given where it cannot be used: missing, a file for a folder (or the reverse), or not
#: readable or writable. Each is a wrong argument, answered like a ValueError.
PATH_ERRORS = (
    FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
)


def main() -> None:
    """Run the CLI; a ``ValueError``/``TypeError`` from our own checks, or a path that cannot
    be used (:data:`PATH_ERRORS`), is printed as one clear line with exit code 2, not a stack
    trace."""
    try:
        code = app(standalone_mode=False)
    except (ValueError, TypeError, *PATH_ERRORS) as err:
        from rich.console import Console
        from rich.markup import escape

        # a path that is not UTF-8 is shown with \x escapes, never as an unprintable surrogate
        text = str(err).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        Console(stderr=True).print(f"[bold red]error:[/] {escape(text)}")
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
