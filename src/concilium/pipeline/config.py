"""The experiment configuration (``EXPERIMENT.toml``), validated before any work starts.

Every section mirrors the parameters of the library function its stage calls, and is checked
against that function's real signature or registry:

- ``[data]``: ``kind = "synthetic"`` and the knobs of :class:`concilium.data.synthetic.SynthConfig`,
  or ``kind = "folder"`` and the keyword parameters of :func:`concilium.data.folder.load_folder`
  plus ``path``;
- ``[models]`` (and the optional second group ``[committee]``): the keyword parameters of
  :func:`concilium.models.train_ensemble`, or ``dir`` = an existing members folder, or
  ``sources`` = member sources (:mod:`concilium.models.sources`: ``hf:DIR``,
  ``timm:NAME@WEIGHTS``, ``torchvision:NAME@WEIGHTS``, ``python:MODULE:FACTORY``, folders);
- ``[explain]``: methods from :data:`concilium.explain.METHODS`, each method's parameters checked by
  :func:`concilium.explain.method_params`, split, limit, batch size, target, baseline;
- ``[ensemble]``: kinds and, per kind, the fields of that kind's options model
  (:data:`concilium.jobs.ensemble.ENSEMBLERS`);
- ``[evaluate]``: metric names or families of :data:`concilium.metrics.METRICS`, each metric's
  parameters checked against its signature, and the mask set;
- ``[audit]``: the fields of :class:`concilium.jobs.audit.AuditOptions`;
- ``[report]``: the fields of :class:`concilium.report.ReportOptions`.

An unknown key is an error that names the key, the section, a close match and the valid keys; a
bad value names the key and the valid choices.

Example:
    >>> cfg = ExperimentConfig.model_validate({"data": {"kind": "synthetic", "n": 200}})
    >>> cfg.models.option("members"), cfg.explain.split
    (11, 'test')
"""

from __future__ import annotations

import inspect
import json
import tomllib
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from concilium._options import did_you_mean
from concilium.data import DATASETS, DatasetSpec
from concilium.jobs.audit import AuditOptions
from concilium.jobs.engines import EngineName
from concilium.jobs.ensemble import ENSEMBLERS, EnsembleOptionsBase, ensemble_options
from concilium.jobs.explain import ExplainOptions, check_methods
from concilium.jobs.one_vs_one import OneVsOneOptions
from concilium.metrics import METRICS
from concilium.metrics.evaluate import check_params
from concilium.models import parse_sources, train_ensemble
from concilium.models.members import MAX_MEMBERS
from concilium.report import ReportOptions
from concilium.vocabulary import FAMILIES, Split


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- signatures


def signature_model(
    fn: Callable[..., Any], *, name: str, exclude: tuple[str, ...] = (),
    extra_fields: Mapping[str, tuple[Any, Any]] | None = None,
) -> type[BaseModel]:
    """A pydantic model (``extra="forbid"``) of ``fn``'s keyword parameters: the same names,
    annotations (``Literal`` choices included) and defaults, minus ``exclude``.

    Args:
        fn: the library function a config section feeds.
        name: the model's name (shown in errors).
        exclude: parameters the pipeline provides itself (data, output folder, device, ...).
        extra_fields: pipeline-only fields ``{name: (annotation, default)}``.
    """
    hints = typing.get_type_hints(fn)
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(fn).parameters.items():
        if pname in exclude or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            continue  # data arguments (the pipeline passes them)
        fields[pname] = (hints.get(pname, Any), p.default)
    fields.update(extra_fields or {})
    return create_model(  # type: ignore[call-overload]
        name, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )


def _keys_error(section: str, unknown: list[str], valid: list[str]) -> ValueError:
    hints = [did_you_mean(key, valid) for key in unknown]
    return ValueError(
        f"[{section}] unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
        f"valid keys: {', '.join(sorted(valid))}"
    )


def validate_kwargs(
    section: str, model: type[BaseModel], values: Mapping[str, Any], *,
    provided: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Validate ``values``, a table of ``model``'s fields (an options model or a
    :func:`signature_model`) minus those the experiment ``provided`` (e.g. ``device``).

    Returns:
        The given values, validated (defaults not filled in).

    Raises:
        ValueError: an unknown key (naming the section, a close match and the valid keys) or a
            bad value (naming the section and the key).
    """
    keys = [k for k in model.model_fields if k not in provided]
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise _keys_error(section, unknown, keys)
    try:
        return model.model_validate(dict(values)).model_dump(exclude_unset=True)
    except ValidationError as err:
        raise ValueError(format_validation_error(err, prefix=section)) from None


def flat_section(
    values: Any, *, into: str, controls: Mapping[str, Any],
    validate: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
) -> Any:
    """A section written flat in the TOML, as its model's fields: the control keys popped
    (``controls``: name -> default), the other keys validated by ``validate(controls, rest)``
    and stored in the field ``into``. A value already in that form (``into`` given), or not a
    table, is returned as it is (pydantic then checks it).

    Example:
        >>> flat_section({"enabled": False, "region": "outside"}, into="options",
        ...              controls={"enabled": True}, validate=lambda _, rest: rest)
        {'enabled': False, 'options': {'region': 'outside'}}
    """
    if not isinstance(values, dict) or into in values:
        return values
    rest = dict(values)
    given = {key: rest.pop(key, default) for key, default in controls.items()}
    return {**given, into: validate(given, rest)}


# ----------------------------------------------------------------------------- the sections


class DataConfig(_Section):
    """``[data]``: ``kind``, a name of :data:`concilium.data.DATASETS` (default
    ``"synthetic"``), and that kind's keys: the benchmark generator's knobs (``n``, ``size``,
    ``num_classes``, ``rare_class``, ``watermark_class``, ... of ``SynthConfig``) or a folder's
    ``path``, ``size``, ``seed`` and ``split_fractions``. Each kind validates its own keys
    (:meth:`concilium.data.DatasetSpec.from_section`).

    Attributes:
        kind: the dataset kind.
        options: the section's other keys, as given.
    """

    kind: str = "synthetic"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, values: Any) -> Any:
        return flat_section(values, into="options", controls={"kind": "synthetic"},
                            validate=_data_options)

    def spec(self) -> DatasetSpec:
        """The dataset spec of this section (what ``RUN/run.json`` records)."""
        return DATASETS.get(self.kind).from_section(self.options)


def _data_options(controls: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``[data]``'s keys other than ``kind``, checked by that kind's spec."""
    kind = controls["kind"]
    if kind not in DATASETS:
        raise ValueError(f"[data] kind: unknown dataset kind {kind!r}; valid: "
                         f"{', '.join(DATASETS.names())}")
    spec_cls = DATASETS.get(kind)
    unknown = sorted(set(values) - set(spec_cls.section_keys()))
    if unknown:
        raise _keys_error("data", unknown, ["kind", *spec_cls.section_keys()])
    try:
        spec_cls.from_section(values)
    except ValidationError as err:
        raise ValueError(format_validation_error(err, prefix="data")) from None
    except ValueError as err:
        raise ValueError(f"[data] {err}") from None
    return values


@cache
def _train_model() -> type[BaseModel]:
    return signature_model(train_ensemble, name="models",
                           exclude=("dataset", "out", "device", "progress"))


class ModelsConfig(_Section):
    """``[models]`` / ``[committee]``: train an ensemble, or use the members in ``dir``, or
    the member ``sources``.

    Attributes:
        dir: an existing members folder (``MODELS/m0`` ...); then nothing is trained and no
            training key may be given.
        sources: member sources, together one ensemble (``["hf:models/vit",
            "timm:resnet50@w/r50.safetensors", "models/trained"]``, see
            :mod:`concilium.models.sources`); then nothing is trained and no training key may
            be given.
        train: the keyword parameters of :func:`concilium.models.train_ensemble` (``arch``,
            ``members``, ``diversity``, ``epochs``, ``archs``, ``attributes``, ...).
    """

    dir: str | None = None
    sources: list[str] | None = None
    train: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, values: Any) -> Any:
        return flat_section(values, into="train", controls={"dir": None, "sources": None},
                            validate=_train_options)

    @property
    def given(self) -> list[str] | None:
        """The member sources to use (``dir`` is one folder source); ``None``: train."""
        if self.sources is not None:
            return list(self.sources)
        return [self.dir] if self.dir is not None else None

    def option(self, name: str) -> Any:
        """A training option, or ``train_ensemble``'s default for it."""
        if name in self.train:
            return self.train[name]
        return _train_model().model_fields[name].default


def _train_options(controls: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``[models]``'s training keys, which ``dir`` and ``sources`` (existing members) exclude;
    the sources are parsed here, so a malformed one fails before any work."""
    directory, sources = controls["dir"], controls["sources"]
    if directory is not None and sources is not None:
        raise ValueError("[models] give dir (one members folder) or sources, not both; "
                         f"e.g. sources = [{directory!r}, ...]")
    if sources is not None:
        if not isinstance(sources, list) or not sources:
            raise ValueError("[models] sources must be a non-empty list of member sources, "
                             'e.g. ["hf:models/vit", "timm:resnet50@weights/r50.safetensors"]')
        try:
            parse_sources(sources)
        except (TypeError, ValueError) as err:
            raise ValueError(f"[models] sources: {err}") from None
    given = "dir" if directory is not None else "sources" if sources is not None else None
    if given is not None and values:
        raise ValueError(
            f"[models] {given} = {directory if directory is not None else sources!r} uses "
            f"existing members; drop the training keys {sorted(values)} or drop {given} to "
            "train"
        )
    members = values.get("members")
    if isinstance(members, int) and not isinstance(members, bool) and members > MAX_MEMBERS:
        raise ValueError(f"[models] members = {members:,}: at most {MAX_MEMBERS:,}")
    return validate_kwargs("models", _train_model(), values)


ExplainConfig = ExplainOptions
"""``[explain]``: the options of the explain job (see :class:`concilium.jobs.explain.ExplainOptions`)."""


def ensemble_kinds() -> list[str]:
    """The run-level ensemblers of :data:`concilium.jobs.ensemble.ENSEMBLERS`."""
    return ENSEMBLERS.names()


class EnsembleConfig(_Section):
    """``[ensemble]``: which ensembles to build (``kinds``, names of
    :data:`concilium.jobs.ensemble.ENSEMBLERS`), and per kind the fields of that kind's options
    model (``[ensemble.options.krr]`` takes :class:`concilium.jobs.ensemble.KrrOptions`'s
    fields, ...). The device is the experiment's."""

    kinds: list[str] = Field(default_factory=lambda: ["ens-avg", "ens-logit"])
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_options(self) -> EnsembleConfig:
        valid = ensemble_kinds()
        for kind in self.kinds:
            if kind not in valid:
                raise ValueError(f"[ensemble] kinds: unknown ensemble kind {kind!r}; valid: "
                                 f"{', '.join(valid)}")
        repeated = sorted({k for k in self.kinds if self.kinds.count(k) > 1})
        if repeated:
            raise ValueError(f"[ensemble] kinds names {repeated} more than once")
        for kind, values in self.options.items():
            if kind not in self.kinds:
                raise ValueError(f"[ensemble.options.{kind}] is for a kind not in kinds "
                                 f"({', '.join(self.kinds)}); add it to kinds or drop the table")
            validate_kwargs(f"ensemble.options.{kind}", ENSEMBLERS.get(kind).options, values,
                            provided=("device",))
        return self

    def options_for(self, kind: str, *, device: str) -> EnsembleOptionsBase:
        """``kind``'s options model (validated, defaults filled in) on ``device``."""
        return ensemble_options(kind, {**self.options.get(kind, {}), "device": device})


class EvaluateConfig(_Section):
    """``[evaluate]``: metrics (names or families) for every stored explanation.

    Attributes:
        metrics: metric names and/or families (``localisation``, ``faithfulness``, ...).
        params: per metric, parameters overriding its defaults (``[evaluate.params.iou]``).
        mask: the ground-truth mask set: ``masks`` (object) or a part/evidence set.
        split: score the explained samples of this split (default ``test``; when the run
            explained ``all``, the CNN ensembler's training rows are left out).
        limit: score only the first ``limit`` explained samples (``None``: all); the costly
            faithfulness/robustness/randomisation metrics use at most ``costly_limit``.
        costly_limit: the sample cap of model-bound metrics (``None``: no cap).
    """

    metrics: list[str] = Field(default_factory=lambda: list(FAMILIES))
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    mask: str = "masks"
    split: Split = "test"
    limit: int | None = Field(None, ge=1)
    costly_limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_metrics(self) -> EvaluateConfig:
        names = resolve_metrics(self.metrics)
        for name, values in self.params.items():
            if name not in METRICS:
                raise ValueError(f"[evaluate.params.{name}] unknown metric; valid: "
                                 f"{', '.join(METRICS.names())}")
            if name not in names:
                raise ValueError(f"[evaluate.params.{name}] is for a metric not selected by "
                                 f"metrics = {self.metrics}")
            try:
                check_params(METRICS.get(name), dict(values))
            except ValueError as err:
                raise ValueError(f"[evaluate.params.{name}] {err}") from None
        return self


def resolve_metrics(selection: list[str]) -> list[str]:
    """Metric names from names and family names, in registry order.

    Raises:
        ValueError: for a name that is neither (listing families and metrics).
    """
    if not selection:
        raise ValueError("[evaluate] metrics is empty; give families or names")
    out: list[str] = []
    for token in selection:
        if token in FAMILIES:
            out += [n for n, s in METRICS.items() if s.category == token and n not in out]
        elif token in METRICS:
            if token not in out:
                out.append(token)
        else:
            raise ValueError(f"[evaluate] metrics: unknown metric or family {token!r}; families: "
                             f"{', '.join(FAMILIES)}; metrics: {', '.join(METRICS.names())}")
    return out


class AuditConfig(_Section):
    """``[audit]``: the fields of :class:`concilium.jobs.audit.AuditOptions` (``estar_source``,
    ``region``, ``factor``, ``anonymisation``, ``subsets``, ...; the device is the
    experiment's), and ``enabled`` (default true)."""

    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, values: Any) -> Any:
        return flat_section(values, into="options", controls={"enabled": True},
                            validate=lambda _, rest: validate_kwargs(
                                "audit", AuditOptions, rest, provided=("device",)))

    def options_for(self, *, device: str) -> AuditOptions:
        """The audit's options (validated, defaults filled in) on ``device``."""
        return AuditOptions.model_validate({**self.options, "device": device})


class GanmexConfig(_Section):
    """``[ganmex]``: the one-vs-one study (a GANMEX generator per member, then "why c and not t"
    maps scored against the benchmark's exact counterfactuals): the fields of
    :class:`concilium.jobs.one_vs_one.OneVsOneOptions` (``preset``, ``generator`` (its
    training options), ``methods``, ``params``, ``seeds``, ``limit``, ``pairs``, ``randomisation``...)."""

    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, values: Any) -> Any:
        return flat_section(values, into="options", controls={},
                            validate=lambda _, rest: validate_kwargs("ganmex", OneVsOneOptions,
                                                                     rest))

    @model_validator(mode="after")
    def _check(self) -> GanmexConfig:
        try:
            self.study_options().ganmex_options()
        except ValueError as err:
            raise ValueError(f"[ganmex] {err}") from None
        return self

    def study_options(self) -> OneVsOneOptions:
        """The study's options (validated, defaults filled in)."""
        return OneVsOneOptions.model_validate(self.options)


class ReportConfig(_Section):
    """``[report]``: the fields of :class:`concilium.report.ReportOptions` (``title``,
    ``gallery_images``, ``gallery_members``, ``gallery_metrics``, ``members_view``)."""

    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, values: Any) -> Any:
        return flat_section(values, into="options", controls={},
                            validate=lambda _, rest: validate_kwargs("report", ReportOptions, rest))


class CommitteeConfig(_Section):
    """``[committee]``: a second group of models (e.g. mixed architectures and training lengths)
    explained into ``RUN/committee`` for the consensus study of the consensus paper.

    Attributes:
        models: as ``[models]`` (``[committee.models]``); default 5 members cycling small-cnn,
            resnet18-small and vgg11-small.
        methods: the committee's explanation methods (the paper: SmoothGrad).
        params: per method parameters.
        limit: explain only the first ``limit`` samples of the split.
        consensus: the consensus options (fields of
            :class:`concilium.jobs.ensemble.ConsensusOptions`).
        metrics: metrics scoring the consensus against the members (localisation by default).
    """

    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig.model_validate(
        {"diversity": "arch", "archs": ["small-cnn", "resnet18-small", "vgg11-small"],
         "members": 5}))
    methods: list[str] = Field(default_factory=lambda: ["smoothgrad"])
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    consensus: dict[str, Any] = Field(default_factory=dict)
    metrics: list[str] = Field(
        default_factory=lambda: ["auc", "average_precision", "mask_correlation"])

    @model_validator(mode="after")
    def _check(self) -> CommitteeConfig:
        try:
            check_methods(self.methods, self.params)
        except ValueError as err:
            raise ValueError(f"[committee] {err}") from None
        EnsembleConfig.model_validate({"kinds": ["consensus"],
                                       "options": {"consensus": self.consensus}})
        resolve_metrics(self.metrics)
        return self


class ExperimentConfig(_Section):
    """A whole experiment (``EXPERIMENT.toml``).

    Attributes:
        name: the experiment's name (report title).
        device: ``cpu``, ``cuda`` or ``cuda:<k>``.
        engine: where explain and evaluate run: ``inprocess`` (default) or ``ray``
            (``pip install concilium[ray]``; see docs/distributed.md). Results are the same.
        address: the Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:10001``;
            default: a local Ray instance).
        workers: Ray workers (default: one per GPU, or per CPU on a CPU-only cluster).
        data, models, committee, explain, ensemble, evaluate, audit, ganmex, report: the
            sections (``ganmex``, like ``committee``, only runs when given).
    """

    name: str = "experiment"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    engine: EngineName = "inprocess"
    address: str | None = None
    workers: int | None = Field(None, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig.model_validate({}))
    committee: CommitteeConfig | None = None
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    audit: AuditConfig = Field(default_factory=lambda: AuditConfig.model_validate({}))
    ganmex: GanmexConfig | None = None
    report: ReportConfig = Field(default_factory=lambda: ReportConfig.model_validate({}))


def format_validation_error(err: ValidationError, *, prefix: str = "") -> str:
    """One line per problem: ``[section] key: message`` (pydantic's messages list the valid
    choices of a ``Literal``); unknown keys name the valid keys."""
    lines = []
    for e in err.errors(include_url=False):
        loc = [str(x) for x in e["loc"]]
        if prefix:
            loc = [prefix, *loc]
        if e["type"] == "extra_forbidden" and loc:
            where = ".".join(loc[:-1])
            valid = _valid_keys(loc[:-1])
            lines.append(f"[{where or 'top level'}] unknown key {did_you_mean(loc[-1], valid)}"
                         + (f"; valid keys: {', '.join(sorted(valid))}" if valid else ""))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith("["):
            lines.append(msg)
            continue
        section = loc[0] if loc else "top level"
        key = ".".join(loc[1:])
        lines.append(f"[{section}] {key + ': ' if key else ''}{msg}"
                     + (f" (got {e['input']!r})" if e["type"] in ("literal_error",) else ""))
    return "\n".join(lines)


def _valid_keys(loc: list[str]) -> list[str]:
    model: Any = ExperimentConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        if typing.get_origin(model) is not None:  # Optional[...]
            model = next((a for a in typing.get_args(model)
                          if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    fields = list(getattr(model, "model_fields", {}))
    flat = {"models": ["dir", "sources", *_train_model().model_fields],
            "report": list(ReportOptions.model_fields),
            "ganmex": list(OneVsOneOptions.model_fields),
            "audit": ["enabled", *(k for k in AuditOptions.model_fields if k != "device")]}
    return flat.get(loc[-1], fields) if loc else fields


def parse_config(values: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a configuration mapping (e.g. parsed TOML).

    Raises:
        ValueError: every problem, one per line, naming the section, the key and the fix.
    """
    try:
        return ExperimentConfig.model_validate(dict(values))
    except ValidationError as err:
        raise ValueError("invalid experiment configuration:\n" + format_validation_error(err)) \
            from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate ``EXPERIMENT.toml`` (or a run's recorded ``experiment.json``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: TOML syntax errors and invalid configurations, naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"experiment file {p} not found; see examples/benchmark.toml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not a text file (not UTF-8); pass an experiment .toml") from None
    try:
        # a run's own record (RUN/experiment.json) is read as JSON; anything else as TOML
        values = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as err:
        kind = "JSON" if p.suffix == ".json" else "TOML"
        raise ValueError(f"{p} is not valid {kind}: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{p} must hold a table of sections ([data], [models], ...)")
    try:
        return parse_config(values)
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from None
