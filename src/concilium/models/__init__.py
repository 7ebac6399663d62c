"""Models: the architecture registry, multitask heads, training, ensembles, member folders."""

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
from concilium.models.weights import load_state_dict_file, load_weights_into

__all__ = [
    "ARCHITECTURES",
    "DIVERSITIES",
    "AttributeView",
    "ConciliumNet",
    "FitSettings",
    "MemberCard",
    "TrainResult",
    "architecture_names",
    "create_model",
    "evaluate_accuracy",
    "load_member",
    "load_members",
    "load_state_dict_file",
    "load_weights_into",
    "multitask_loss",
    "read_card",
    "save_member",
    "train_ensemble",
    "train_member",
]
