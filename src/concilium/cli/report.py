"""`concilium report` (see its issue)."""

from concilium.cli.app import app  # noqa: F401
