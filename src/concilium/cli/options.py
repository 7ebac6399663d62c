"""The options of the commands: flags derived from options models, comma-separated lists and
the ``--device`` check.

Flags from an options model (pydantic, ``extra="forbid"``): every field becomes one flag
(``from_source`` -> ``--from-source``; a bool ``--x/--no-x``), its help text the field's
description, its choices and its default; lists are comma-separated (``--methods
saliency,gradcam``), mappings ``key=value`` pairs (``--metric-weights auc=1,iou=0.5``). With
several models (the ensemble kinds), a field they share is one flag, and a flag the chosen model
does not have is an error that names the ones it has. Fields holding a nested model
(``subset_config``) have no flag; set them in the experiment file.

A command takes the generated flags as ``**flags`` (its ``__signature__`` lists them for
typer), and turns the given ones into a mapping for the model with :func:`given_options`.
Commands with hand-written options parse a comma-separated one with :func:`split_names` and
check ``--device`` with :func:`check_device`.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


def flag(name: str) -> str:
    """The flag of a field: ``from_source`` -> ``--from-source``."""
    return "--" + name.replace("_", "-")


def _core(annotation: Any) -> Any:
    """``annotation`` without ``None`` (``float | None`` -> ``float``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def has_flag(field: FieldInfo) -> bool:
    """Whether a field can be given on the command line (not a nested model)."""
    core = _core(field.annotation)
    return not (isinstance(core, type) and issubclass(core, BaseModel))


def _metavar(core: Any) -> str:
    origin = typing.get_origin(core)
    if origin is list:
        return "A,B,..."
    if origin is dict:
        return "KEY=VALUE,..."
    if origin is Literal:
        return "CHOICE"
    return {int: "INT", float: "FLOAT"}.get(core, "TEXT")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _help(fields: Mapping[str, FieldInfo], *, several: bool) -> str:
    """The help of one flag from the fields of every model that has it."""
    owners = list(fields)
    by_text: dict[str, list[str]] = {}
    for owner, f in fields.items():
        by_text.setdefault(f.description or "", []).append(owner)
    if len(by_text) == 1:
        text = next(iter(by_text))
    else:
        text = "; ".join(f"{', '.join(who)}: {what}" for what, who in by_text.items())
    core = _core(next(iter(fields.values())).annotation)
    if typing.get_origin(core) is Literal:
        text += f"; one of {', '.join(str(a) for a in typing.get_args(core))}"
    by_default: dict[str, list[str]] = {}
    for owner, f in fields.items():
        by_default.setdefault(_show(f.get_default(call_default_factory=True)), []).append(owner)
    if "default" not in text:
        if len(by_default) == 1:
            text += f" (default: {next(iter(by_default))})"
        else:
            common = max(by_default, key=lambda d: len(by_default[d]))
            rest = [f"{d} for {', '.join(who)}" for d, who in by_default.items() if d != common]
            text += f" (default: {'; '.join(rest)}; {common} otherwise)"
    if several:
        text = f"({', '.join(owners)}) {text}"
    return text


def model_flags(models: Mapping[str, type[BaseModel]], *, exclude: Collection[str] = ()
                ) -> list[inspect.Parameter]:
    """Keyword-only typer parameters, one per field of ``models`` (``owner -> model``) but those
    in ``exclude`` (fields the command spells its own way); all default to ``None`` (not given).

    With several models, a field all of them have is listed under "Options of every <what>",
    a field of one under "Options of <owner>", the rest under "Options of several" with their
    owners named in the help.
    """
    fields: dict[str, dict[str, FieldInfo]] = {}
    for owner, model in models.items():
        for name, f in model.model_fields.items():
            if has_flag(f) and name not in exclude:
                fields.setdefault(name, {})[owner] = f
    several = len(models) > 1
    params = []
    for name, owned in fields.items():
        panel = None
        if several:
            panel = ("Options of every kind" if len(owned) == len(models) else
                     f"Options of {next(iter(owned))}" if len(owned) == 1 else
                     "Options of several kinds")
        core = _core(next(iter(owned.values())).annotation)
        help_text = _help(owned, several=several and 1 < len(owned) < len(models))
        if core is bool:
            option = typer.Option(None, f"{flag(name)}/--no-{flag(name)[2:]}", help=help_text,
                                  rich_help_panel=panel, show_default=False)
            annotation: Any = bool | None
        else:
            option = typer.Option(None, flag(name), help=help_text, metavar=_metavar(core),
                                  rich_help_panel=panel, show_default=False)
            annotation = str | None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=annotation))
    return params


def _items(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse(name: str, core: Any, text: Any) -> Any:
    """The value of the flag of field ``name`` (of type ``core``) as the model takes it."""
    if not isinstance(text, str):
        return text
    origin = typing.get_origin(core)
    if origin is list:
        return split_names(text, option=flag(name))
    if origin is dict:
        pairs = _items(text)
        if not pairs or any("=" not in p for p in pairs):
            raise ValueError(f"{flag(name)}: give key=value pairs separated by commas; got "
                             f"{text!r}")
        return dict(p.split("=", 1) for p in pairs)
    return text


def given_options(flags: Mapping[str, Any], model: type[BaseModel], *, what: str
                  ) -> dict[str, Any]:
    """The flags given (not ``None``) as a mapping of ``model``'s fields.

    Raises:
        ValueError: a flag ``model`` has no field for (naming the flags ``what`` takes), or a
            malformed list or mapping.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    valid = {k: f for k, f in model.model_fields.items() if has_flag(f)}
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise ValueError(f"{', '.join(flag(k) for k in unknown)} "
                         f"{'is not an option' if len(unknown) == 1 else 'are not options'} of "
                         f"{what}; its options: {', '.join(flag(k) for k in valid)}")
    parsed = {name: _parse(name, _core(valid[name].annotation), value)
              for name, value in given.items()}
    try:
        model.model_validate(parsed)
    except ValidationError as err:
        # a value of the wrong type or range, named by the flag the user typed; the models'
        # own checks (value_error) say their own message when the command validates
        problems = [
            f"{flag(str(e['loc'][0]))}: {e['msg']}"
            for e in err.errors(include_url=False)
            if e["loc"] and e["type"] not in ("missing", "value_error", "assertion_error")
        ]
        if problems:
            raise ValueError(f"{what}: {'; '.join(problems)}") from None
    return parsed


def split_names(text: str | None, *, option: str, example: str | None = None
                ) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``None`` (the option left out) -> ``None``.

    Args:
        text: the option's value.
        option: the option's flag, for the message (``"--archs"``).
        example: a valid value, for the message (``"small-cnn,resnet18"``); without one the
            message says to leave the option out.

    Raises:
        ValueError: when the value names nothing (``","``, ``""``).
    """
    if text is None:
        return None
    names = _items(text)
    if not names:
        fix = f"e.g. {example}" if example else f"or leave {option} out"
        raise ValueError(f"{option} is empty; give comma-separated names, {fix}")
    return names


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:<k>``, available here (the check of
    :func:`concilium.models.settings.check_device`).

    Raises:
        ValueError: on another name or CUDA not available.
    """
    from concilium.models.settings import check_device as check_torch_device

    try:
        check_torch_device(device)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None
    return device


ENGINE_HELP = ("Where the work runs: inprocess (default) or ray (Ray actors on this machine or "
               "the cluster at --address; pip install concilium[ray]).")
ADDRESS_HELP = "Ray cluster to join (auto, HOST:PORT, ray://HOST:10001; default: a local one)."
WORKERS_HELP = "Ray workers (default: one per GPU, or per CPU of a CPU-only cluster)."


def engine_parameters() -> list[inspect.Parameter]:
    """``--engine``, ``--address``, ``--workers`` as keyword parameters of a command."""
    def keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=default)
    return [
        keyword("engine", str, typer.Option("inprocess", "--engine", help=ENGINE_HELP)),
        keyword("address", str | None, typer.Option(None, "--address", help=ADDRESS_HELP)),
        keyword("workers", int | None, typer.Option(None, "--workers", min=1,
                                                    help=WORKERS_HELP)),
    ]


def make_engine_from_flags(engine: str, address: str | None, workers: int | None) -> Any:
    """The engine of ``--engine/--address/--workers`` (errors name the flag's fix)."""
    from concilium.jobs.engines import make_engine

    return make_engine(engine, address=address, workers=workers)
