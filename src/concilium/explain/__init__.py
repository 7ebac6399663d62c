"""Attribution methods (Captum wrappers), baselines, targets and automatic batching.

>>> from concilium.explain import explain, METHODS
>>> "integrated_gradients" in METHODS
True
"""

from concilium.explain.baselines import (
    BASELINES,
    BaselineProvider,
    BlackBaseline,
    BlurBaseline,
    MeanBaseline,
    TensorBaseline,
    UniformBaseline,
    ZeroBaseline,
    baseline_name,
    parse_baseline,
    resolve_baselines,
)
from concilium.explain.batching import Plan, probe
from concilium.explain.cam import GRADIENT_CAMS
from concilium.explain.engine import explain, explain_many, reduce_channels
from concilium.explain.layers import LayerLayout, conv_layers, default_layer, resolve_layer
from concilium.explain.lrp import canonizers
from concilium.explain.methods import METHODS, MethodSpec, method_params
from concilium.explain.prepare import Prepared
from concilium.explain.rollout import rollout
from concilium.explain.shared_pass import SHARED_PASS
from concilium.explain.targets import ContrastModel, Target, contrast_target, resolve_target
from concilium.vocabulary import REDUCTIONS

__all__ = [
    "GRADIENT_CAMS",
    "BASELINES",
    "METHODS",
    "REDUCTIONS",
    "SHARED_PASS",
    "BaselineProvider",
    "BlackBaseline",
    "BlurBaseline",
    "ContrastModel",
    "LayerLayout",
    "MeanBaseline",
    "MethodSpec",
    "Plan",
    "Prepared",
    "Target",
    "TensorBaseline",
    "UniformBaseline",
    "ZeroBaseline",
    "baseline_name",
    "canonizers",
    "contrast_target",
    "conv_layers",
    "default_layer",
    "explain",
    "explain_many",
    "method_params",
    "parse_baseline",
    "probe",
    "reduce_channels",
    "resolve_baselines",
    "resolve_layer",
    "resolve_target",
    "rollout",
]
