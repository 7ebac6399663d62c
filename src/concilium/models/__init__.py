"""Models: the architecture registry, multitask heads, ensemble training, safe checkpoints."""

from concilium.models.architectures import ARCHITECTURES, architecture_names, create_model
from concilium.models.base import AttributeView, ConciliumNet
from concilium.models.checkpoint import (
    MemberCard,
    load_member,
    load_members,
    load_state_dict_file,
    read_card,
    save_member,
)
from concilium.models.training import (
    TrainResult,
    evaluate_accuracy,
    multitask_loss,
    train_ensemble,
    train_member,
)

__all__ = [
    "ARCHITECTURES",
    "AttributeView",
    "ConciliumNet",
    "MemberCard",
    "TrainResult",
    "architecture_names",
    "create_model",
    "evaluate_accuracy",
    "load_member",
    "load_members",
    "load_state_dict_file",
    "multitask_loss",
    "read_card",
    "save_member",
    "train_ensemble",
    "train_member",
]
