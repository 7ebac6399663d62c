"""Models: the architecture registry, multitask heads, training, ensembles, member folders, and
member sources (``hf:DIR``, ``timm:NAME@WEIGHTS``, ``torchvision:NAME@WEIGHTS``,
``python:MODULE:FACTORY``, members folders; :mod:`concilium.models.sources`)."""

from concilium.models.architectures import ARCHITECTURES, architecture_names, create_model
from concilium.models.base import AttributeView, ConciliumNet
from concilium.models.diversities import DIVERSITIES
from concilium.models.ensembles import train_ensemble
from concilium.models.fit import TrainResult, evaluate_accuracy, multitask_loss, train_member
from concilium.models.members import (
    MemberCard,
    load_member,
    load_members,
    read_card,
    save_member,
)
from concilium.models.settings import FitSettings
from concilium.models.sources import (
    SOURCE_KINDS,
    SourceCard,
    as_member,
    describe_sources,
    load_sources,
    parse_source,
    parse_sources,
)
from concilium.models.weights import load_state_dict_file, load_weights_into
from concilium.models.wrapper import Preprocessing, SourceModel, to_logits

# the source kinds register themselves in SOURCE_KINDS when imported
from concilium.models import hub, libraries  # noqa: E402, F401  isort: skip

__all__ = [
    "ARCHITECTURES",
    "DIVERSITIES",
    "SOURCE_KINDS",
    "AttributeView",
    "ConciliumNet",
    "FitSettings",
    "MemberCard",
    "Preprocessing",
    "SourceCard",
    "SourceModel",
    "TrainResult",
    "architecture_names",
    "as_member",
    "create_model",
    "describe_sources",
    "evaluate_accuracy",
    "load_member",
    "load_members",
    "load_sources",
    "load_state_dict_file",
    "load_weights_into",
    "multitask_loss",
    "parse_source",
    "parse_sources",
    "read_card",
    "save_member",
    "to_logits",
    "train_ensemble",
    "train_member",
]
