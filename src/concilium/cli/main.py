"""Console entry point: ``concilium``. Each command lives in its own module of this package,
imported when the command is used (:class:`concilium.cli.app.LazyGroup`)."""

from __future__ import annotations

import sys

from concilium.cli.app import app  # commands are imported when used (see LazyGroup)


@app.callback()
def _root() -> None:
    """Trustworthy saliency explanations: compute, ensemble and measure them."""


INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""

#: A path given where it cannot be used: missing, a file for a folder (or the reverse), or not
#: readable or writable. Each is a wrong argument, answered like a ValueError.
PATH_ERRORS = (
    FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
)


def _error(text: str, code: int) -> None:
    from rich.console import Console
    from rich.markup import escape

    # a path that is not UTF-8 is shown with \x escapes, never as an unprintable surrogate
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    # soft wrap: one line however long the paths in it (a log line, and greppable)
    Console(stderr=True).print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)
    sys.exit(code)


def _interrupted() -> None:
    from rich.console import Console

    Console(stderr=True).print(
        "[bold yellow]interrupted:[/] finished work is kept (nothing half-written is marked "
        "done); run the same command again to resume"
    )
    sys.exit(INTERRUPTED)


def main() -> None:
    """Run the CLI; a ``ValueError``/``TypeError`` from our own checks, a path that cannot be
    used (:data:`PATH_ERRORS`) or an ``ImportError`` naming a missing extra is printed as one
    clear line, not a stack trace (status 2); so are a full disk, an unwritable folder and a run
    locked by another process (status 1). Ctrl-C stops with status 130 after the work in flight
    is either finished or dropped, never half-kept."""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        _interrupted()
    except (ValueError, TypeError, ImportError, *PATH_ERRORS) as err:
        _error(str(err), 2)
    except SystemExit as err:
        sys.exit(err.code)
    except Exception as err:
        status = getattr(type(err), "cli_exit_status", None)  # StorageError, RunLockedError
        if status is not None:
            _error(str(getattr(err, "strerror", None) or err), status)
        # typer/click usage errors (typer bundles its own click): show them the click way.
        if hasattr(err, "show") and hasattr(err, "exit_code"):
            err.show()
            sys.exit(err.exit_code)
        if type(err).__name__ == "Abort":  # click's answer to Ctrl-C (or EOF at a prompt)
            if isinstance(err.__context__, KeyboardInterrupt):
                _interrupted()
            sys.exit(1)
        raise
    # Without standalone mode, click returns the code of a ``typer.Exit`` instead of exiting;
    # typer turns Ctrl-C into ``Exit(130)``.
    if code == INTERRUPTED:
        _interrupted()
    if isinstance(code, int) and not isinstance(code, bool):
        sys.exit(code)

if __name__ == "__main__":
    main()
