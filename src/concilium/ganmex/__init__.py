"""GANMEX: counterfactual baselines from a class-conditional GAN (Shih, Tien and Karnin, 2021).

Modules: :mod:`~.networks` (generator, critic), :mod:`~.losses` (WGAN-GP, generator loss),
:mod:`~.training` (training loop, validation, resume), :mod:`~.checkpoint` (``GEN/`` on disk) and
:mod:`~.provider` (the ``BaselineProvider`` for ``concilium.explain``).
"""

from concilium.ganmex.checkpoint import (
    PRESETS,
    GanmexCard,
    GanmexOptions,
    card_hash,
    load_card,
    load_generator,
)
from concilium.ganmex.losses import (
    critic_loss,
    generator_loss,
    gradient_penalty,
    similarity_loss,
    target_loss,
)
from concilium.ganmex.networks import Critic, Generator
from concilium.ganmex.provider import GanmexBaseline, GeneratorBaseline, parse_baseline_spec
from concilium.ganmex.training import (
    ValidationRecord,
    finetune_generator,
    frozen,
    read_history,
    sample_targets,
    train_ganmex,
    train_step,
    validate,
    validation_targets,
)

__all__ = [
    "PRESETS",
    "Critic",
    "GanmexBaseline",
    "GanmexCard",
    "GanmexOptions",
    "Generator",
    "GeneratorBaseline",
    "ValidationRecord",
    "card_hash",
    "critic_loss",
    "finetune_generator",
    "frozen",
    "generator_loss",
    "gradient_penalty",
    "load_card",
    "load_generator",
    "parse_baseline_spec",
    "read_history",
    "sample_targets",
    "similarity_loss",
    "target_loss",
    "train_ganmex",
    "train_step",
    "validate",
    "validation_targets",
]
