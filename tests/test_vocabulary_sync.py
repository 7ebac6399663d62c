"""Every ``Literal`` of names that mirrors a registry or a vocabulary tuple spells exactly its
names, so a type checker, the config validation and the registries never disagree.

Literals in the module that defines a registry are found automatically; the mirrors elsewhere
are listed in :data:`MIRRORS`.
"""

from __future__ import annotations

import inspect
from typing import Literal, get_args, get_origin, get_type_hints

import pytest
import torch

from concilium import vocabulary
from concilium.explain.engine import reduce_channels
from concilium.explain.methods import METHODS
from concilium.explain.methods import Kind as MethodKind
from concilium.ganmex.checkpoint import GanmexOptions
from concilium.ganmex.networks import Generator
from concilium.metrics.perturb import BASELINE_NAMES, BaselineName
from concilium.metrics.registry import CATEGORIES, METRICS
from concilium.models import adapters, members, settings
from concilium.models.diversities import DIVERSITIES
from registry_helpers import all_registries


def _literal_args(tp) -> tuple:
    """The names of a ``Literal`` (also inside ``Literal[...] | None``)."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    return tuple(a for arg in get_args(tp) for a in _literal_args(arg))


def _module_literals(module) -> dict[str, tuple]:
    """The ``Literal`` aliases a module defines (not those it imports)."""
    source = inspect.getsource(module)
    return {name: get_args(v) for name, v in vars(module).items()
            if get_origin(v) is Literal and f"\n{name} = Literal[" in source}


#: ``(what, names of the Literal, names it mirrors)``.
MIRRORS = [
    ("members.Diversity vs DIVERSITIES", get_args(members.Diversity), DIVERSITIES.names()),
    ("vocabulary.Family vs FAMILIES", get_args(vocabulary.Family), vocabulary.FAMILIES),
    ("metrics CATEGORIES vs FAMILIES", CATEGORIES, vocabulary.FAMILIES),
    ("vocabulary.SplitName vs SPLITS", get_args(vocabulary.SplitName), vocabulary.SPLITS),
    ("vocabulary.Split vs SPLITS + all", get_args(vocabulary.Split), (*vocabulary.SPLITS, "all")),
    ("vocabulary.Reduction vs REDUCTIONS", get_args(vocabulary.Reduction), vocabulary.REDUCTIONS),
    ("metrics.perturb.BaselineName vs BASELINE_NAMES", get_args(BaselineName), BASELINE_NAMES),
    ("explain.methods.Kind vs the kinds of METHODS", get_args(MethodKind),
     {spec.kind for _, spec in METHODS.items()}),
    ("models.adapters.AdapterLibrary vs LIBRARIES", get_args(adapters.AdapterLibrary),
     adapters.LIBRARIES),
    ("MemberCard.finetune vs settings.Finetune",
     _literal_args(get_type_hints(members.MemberCard)["finetune"]), get_args(settings.Finetune)),
    ("ganmex Generator(output=) vs GanmexOptions.output",
     _literal_args(get_type_hints(Generator.__init__)["output"]),
     _literal_args(get_type_hints(GanmexOptions)["output"])),
]


@pytest.mark.parametrize(("what", "literal", "names"), MIRRORS, ids=[m[0] for m in MIRRORS])
def test_literal_spells_the_names_it_mirrors(what, literal, names):
    assert literal, f"{what}: no Literal found (was the annotation changed?)"
    assert len(set(literal)) == len(literal), f"{what}: a name twice in {literal}"
    assert set(literal) == set(names), (
        f"{what}: only in the Literal {sorted(set(literal) - set(names))}, "
        f"only in the names {sorted(set(names) - set(literal))}")


REGISTRIES = all_registries()


@pytest.mark.parametrize("reg", REGISTRIES, ids=str)
def test_literals_beside_a_registry_spell_its_names(reg):
    """A ``Literal`` alias defined in the registry's own module (or its entries' module) that
    shares a name with it (e.g. ``ReducerName`` beside ``REDUCERS``) names every entry and
    nothing else."""
    module = inspect.getmodule(reg.registry.get(reg.registry.names()[0])) or None
    modules = {reg.module, getattr(module, "__name__", reg.module)}
    names = set(reg.registry.names())
    for mod_name in modules:
        mod = __import__(mod_name, fromlist=["_"])
        for alias, args in _module_literals(mod).items():
            if set(args) & names:
                assert set(args) == names, (
                    f"{mod_name}.{alias} {sorted(args)} != {reg} {sorted(names)}")


def test_every_family_has_a_metric_and_every_metric_a_family():
    used = {spec.category for _, spec in METRICS.items()}
    assert used == set(vocabulary.FAMILIES)


@pytest.mark.parametrize("reduction", vocabulary.REDUCTIONS)
def test_every_reduction_is_implemented(reduction):
    attr = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # (N=1, C=2, H=1, W=2)
    expected = {"sum": [4.0, -1.5], "abs_sum": [4.0, 2.5], "l2": [10**0.5, 4.25**0.5],
                "max_abs": [3.0, 2.0]}
    torch.testing.assert_close(reduce_channels(attr, reduction), torch.tensor([[expected[reduction]]]))
