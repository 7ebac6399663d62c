"""Options models (one pydantic model, ``extra="forbid"``, per job, ensembler kind or the
report), validated here from a mapping (a config table, CLI flags) with errors that name the bad
key and the valid ones.

Example:
    >>> from pydantic import BaseModel
    >>> class Opts(BaseModel):
    ...     folds: int = 5
    >>> validate_options(Opts, {"folds": "3"}, what="krr").folds
    3
    >>> validate_options(Opts, {"fold": 3}, what="krr")
    Traceback (most recent call last):
    ...
    ValueError: krr has no option 'fold' (did you mean 'folds'?); its options: folds
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """``key`` quoted, with the closest valid name if one is close.

    Example:
        >>> did_you_mean("fold", ["folds", "seed"])
        "'fold' (did you mean 'folds'?)"
    """
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def unknown_options_error(what: str, unknown: Iterable[str], valid: Iterable[str]) -> ValueError:
    """The error for options ``what`` does not take: each unknown name (with a close match, if
    any) and every valid name."""
    valid = sorted(valid)
    names = [did_you_mean(key, valid) for key in sorted(unknown)]
    plural = "s" if len(names) > 1 else ""
    return ValueError(f"{what} has no option{plural} {', '.join(names)}; its options: "
                      f"{', '.join(valid)}")


def validate_options(model: type[M], options: M | Mapping[str, Any] | None, *, what: str) -> M:
    """``options`` as an instance of ``model``: an instance is returned as is, a mapping is
    validated, ``None`` gives the defaults.

    Args:
        model: the options model (``extra="forbid"``).
        options: an instance of ``model``, a mapping of its fields, or ``None``.
        what: who takes the options, for error messages (``"ensembler 'krr'"``).

    Raises:
        TypeError: ``options`` is another model or not a mapping.
        ValueError: an unknown key (naming the valid ones) or a bad value (naming the key).
    """
    if options is None:
        return model()
    if isinstance(options, model):
        return options
    if isinstance(options, BaseModel) or not isinstance(options, Mapping):
        raise TypeError(f"{what} takes {model.__name__} or a mapping of its fields; got "
                        f"{type(options).__name__}")
    unknown = set(options) - set(model.model_fields)
    if unknown:
        raise unknown_options_error(what, unknown, model.model_fields)
    try:
        return model.model_validate(dict(options))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                             for e in err.errors(include_url=False))
        raise ValueError(f"{what}: {problems}") from None
