"""Mutation check of the metric suite: does a deliberately wrong metric fail a test?

Usage::

    .venv/bin/python experiments/metric_mutations.py                 # every mutation, one job
    .venv/bin/python experiments/metric_mutations.py --jobs 2
    .venv/bin/python experiments/metric_mutations.py --only auc iou  # some metrics

:data:`MUTATIONS` holds at least one realistic defect per registered metric (a sign flipped, a
reduction over the wrong axis, an off-by-one step or range, a wrong default, a wrong
normalisation, MoRF and LeRF swapped, ...). Each is a replacement of one exact piece of a metric
module's source (``old`` must occur exactly once there). Nothing is written to disk: each
mutation runs the chosen tests in a fresh ``pytest`` process that loads this file as a plugin
(``-p metric_mutations``); with ``CONCILIUM_MUTATION`` set, the plugin puts an import hook first
on ``sys.meta_path`` that compiles the mutated source in place of the module's file.

A mutation is *killed* when at least one test fails, *survived* when all pass and an *error*
when its ``old`` text is not found once or pytest did not run (collection error, no tests).
The markdown table goes to stdout and to ``experiments/results/metric_mutations.md``; the
registered metrics that have no mutation are listed (and make the exit status 1), so a new
metric gets its entry here. Rows named in :data:`PSEUDO_METRICS` (``(shared engine)``) break code
that every perturbation metric runs through (``metrics/shared.py``) rather than one metric. ``tests/metrics/test_mutation_table.py`` checks both invariants
(every metric has an entry; every ``old`` text occurs exactly once) in the normal suite.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
ENV = "CONCILIUM_MUTATION"
RESULTS = ROOT / "experiments" / "results" / "metric_mutations.md"

#: The metric tests every mutation runs: hand values, registry-parametrised checks, the review's
#: findings and the Quantus comparisons (not the statistics, claims and CLI tests, which never
#: compute a metric).
METRIC_TESTS: tuple[str, ...] = tuple(
    f"tests/metrics/{name}.py"
    for name in (
        "test_hand_values",
        "test_hand_values_extra",
        "test_metric_entries",
        "test_metric_registry",
        "test_review_findings",
        "test_vs_quantus",
    )
)
#: The tests of one family's module, run first (``-x`` then stops at its first failure).
MODULE_TESTS: dict[str, tuple[str, ...]] = {
    "regions": ("tests/metrics/test_regions.py", "tests/metrics/test_regions_vs_quantus.py"),
    "estimates": ("tests/metrics/test_regions.py", "tests/metrics/test_regions_vs_quantus.py"),
    "stability": ("tests/metrics/test_stability.py",),
    "translation": ("tests/metrics/test_continuity.py",),
    "agreement": ("tests/metrics/test_consistency.py",),
    "mosaic": ("tests/metrics/test_focus.py",),
    "randomisation": ("tests/metrics/test_mprt_variants.py",),
    "mprt_variants": ("tests/metrics/test_mprt_variants.py",),
    "axiomatic": ("tests/metrics/test_axiomatic.py",),
    "iterative_removal": ("tests/metrics/test_irof.py",),
    "shared": ("tests/metrics/test_shared_passes.py",),
}
#: Rows of the table that are not registered metrics: code every metric runs through.
ENGINE = "(shared engine)"
PSEUDO_METRICS: frozenset[str] = frozenset({ENGINE})
PYTEST_ARGS: tuple[str, ...] = ("-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider")


@dataclass(frozen=True)
class Mutation:
    """One wrong variant of a metric: ``old`` replaced by ``new`` in ``module``'s source.

    Attributes:
        metric: the registered metric it breaks.
        module: dotted name of the module whose source is changed.
        old: source text that occurs exactly once in the module.
        new: its wrong replacement.
        what: one line saying what is wrong.
        tests: test files or folders to run (relative to the repository root).
    """

    metric: str
    module: str
    old: str
    new: str
    what: str
    tests: tuple[str, ...] = METRIC_TESTS

    @property
    def path(self) -> Path:
        """The module's source file."""
        return SRC / (self.module.replace(".", "/") + ".py")

    def occurrences(self) -> int:
        """How many times ``old`` occurs in the module's source (the mutation needs 1)."""
        return self.path.read_text(encoding="utf-8").count(self.old)


def _m(metric: str, module: str, old: str, new: str, what: str) -> Mutation:
    tests = MODULE_TESTS.get(module, ()) + METRIC_TESTS
    return Mutation(metric, f"concilium.metrics.{module}", old, new, what, tests)


MUTATIONS: tuple[Mutation, ...] = (
    # localisation
    _m("pointing_game", "localisation",
       "hit = (s & (a == a.amax(1, keepdim=True))).any(1).float()",
       "hit = (s & (a == a.amin(1, keepdim=True))).any(1).float()",
       "points with the minimum instead of the maximum"),
    _m("relevance_mass", "localisation",
       "score = torch.where(s, a64, 0.0).sum(1) / total",
       "score = torch.where(s, a64, 0.0).sum(1) / s.sum(1)",
       "divides by the mask area instead of the total relevance"),
    _m("relevance_rank", "localisation",
       "score = top_k_inside(a, s, size) / size.clamp_min(1)",
       "score = top_k_inside(a, s, size + 1) / size.clamp_min(1)",
       "off by one: takes the |s| + 1 highest pixels"),
    _m("top_k_intersection", "localisation",
       "k: int = 1000,",
       "k: int = 100,",
       "wrong default k (100 instead of Quantus's 1000)"),
    _m("auc", "localisation",
       'below_or_equal = np.searchsorted(neg, pos, side="right")',
       'below_or_equal = np.searchsorted(neg, pos, side="left")',
       "ties counted as losses instead of half"),
    _m("average_precision", "localisation",
       "score = (y * precision_end).sum(1) / y.sum(1).clamp_min(1)",
       "score = (y * precision_end).sum(1) / y.shape[1]",
       "normalised by the number of pixels instead of positives"),
    _m("iou", "localisation",
       "k = max(1, round(q * a.shape[1]))",
       "k = max(1, round(q * a.shape[1]) + 1)",
       "off by one: the top-q selection keeps one pixel too many"),
    _m("f1_at_quarter_max", "localisation",
       "score = 2 * tp / (b.sum(1) + s.sum(1)).clamp_min(1)",
       "score = tp / (b.sum(1) + s.sum(1)).clamp_min(1)",
       "F1 without its factor 2 (half the Dice score)"),
    _m("com_distance", "localisation",
       "score = torch.sqrt((ay - sy) ** 2 + (ax - sx) ** 2) / ((h - 1) ** 2 + (w - 1) ** 2) ** 0.5",
       "score = torch.sqrt((ay - sy) ** 2 + (ax - sx) ** 2) / (h**2 + w**2) ** 0.5",
       "off by one in the diagonal (H, W instead of H - 1, W - 1)"),
    _m("mask_correlation", "localisation",
       "score = pearson(a, s.double())",
       "score = pearson(a, (~s).double())",
       "sign flipped: correlates with the background"),
    # complexity
    _m("sparseness", "concentration",
       "score = ((2 * i - p - 1) * a).sum(1) / (p * a.sum(1))",
       "score = ((2 * i - p + 1) * a).sum(1) / (p * a.sum(1))",
       "off by one in the Gini weights (2i - P + 1)"),
    _m("complexity", "concentration",
       "share = a / total.clamp_min(torch.finfo(torch.float64).tiny)",
       "share = a / a.abs().amax(1, keepdim=True)",
       "shares normalised by the max instead of the sum"),
    _m("effective_complexity", "concentration",
       "eps: float = 1e-5,",
       "eps: float = 1e-3,",
       "wrong default eps (1e-3 instead of Quantus's 1e-5)"),
    # one-shot faithfulness
    _m("faithfulness_correlation", "faithfulness",
       "score = pearson(att, y0.unsqueeze(1) - ys)",
       "score = pearson(att, ys - y0.unsqueeze(1))",
       "sign flipped: correlates with the output rise, not the drop"),
    _m("monotonicity_correlation", "faithfulness",
       "ranks, n_features = _ranks(a, images, feats, descending=False, streams=streams)",
       "ranks, n_features = _ranks(a, images, feats, descending=True, streams=streams)",
       "steps taken in decreasing relevance (MoRF instead of LeRF)"),
    _m("infidelity", "faithfulness",
       "deltas = y0.double()[:, None] - ys.double()",
       "deltas = ys.double() - y0.double()[:, None]",
       "sign flipped: output rise compared with the predicted drop"),
    _m("sufficiency", "faithfulness",
       "return (ranks[i] >= k[i, None]).view(-1, h, w)",
       "return (ranks[i] > k[i, None]).view(-1, h, w)",
       "off by one: keeps k + 1 pixels"),
    # curves
    _m("deletion", "curves",
       '"deletion",\n    mode="deletion",\n    order="morf",',
       '"deletion",\n    mode="deletion",\n    order="lerf",',
       "MoRF and LeRF swapped"),
    _m("deletion_lerf", "curves",
       '"deletion_lerf",\n    mode="deletion",',
       '"deletion_lerf",\n    mode="insertion",',
       "insertion curve instead of deletion"),
    _m("insertion", "curves",
       'baseline="blur",\n    summary="""Area under the insertion curve, MoRF',
       'baseline="black",\n    summary="""Area under the insertion curve, MoRF',
       "wrong default baseline (black instead of blur)"),
    _m("insertion_lerf", "curves",
       '"insertion_lerf",\n    mode="insertion",\n    order="lerf",',
       '"insertion_lerf",\n    mode="insertion",\n    order="morf",',
       "MoRF and LeRF swapped"),
    _m("aopc", "curves",
       "return (scores[:, :1] - scores).double().mean(1)",
       "return (scores[:, :1] - scores[:, 1:]).double().mean(1)",
       "off by one: the mean leaves out the start point"),
    _m("aopc_lerf", "curves",
       '"aopc_lerf",\n    mode="deletion",\n    order="lerf",',
       '"aopc_lerf",\n    mode="deletion",\n    order="morf",',
       "MoRF and LeRF swapped"),
    _m("pixel_flipping", "curves",
       'include_start=False,\n    step=1,\n    unit="pixels",\n    summary="""Pixel flipping',
       'include_start=True,\n    step=1,\n    unit="pixels",\n    summary="""Pixel flipping',
       "off by one step: the curve keeps its unperturbed start point"),
    _m("monotonicity", "curves",
       'unit="pixels",\n    abs=True,',
       'unit="pixels",\n    abs=False,',
       "wrong default abs (False instead of Quantus's True)"),
    # regions, estimates
    _m("region_perturbation", "regions",
       "return y0.unsqueeze(1) - ys",
       "return ys - y0.unsqueeze(1)",
       "sign flipped: area of the output rise"),
    _m("selectivity", "regions",
       "n_variants=counts, cumulative=True,",
       "n_variants=counts - 1, cumulative=True,",
       "off by one: stops before the last patch is removed"),
    _m("faithfulness_estimate", "estimates",
       "n_steps=None, cumulative=False,",
       "n_steps=None, cumulative=True,",
       "groups removed cumulatively instead of one at a time"),
    _m("sensitivity_n", "estimates",
       "n_max = min(int(n_max_percentage * f // _check_step(features_in_step, f)),",
       "n_max = min(int(n_max_percentage * f // _check_step(features_in_step, f)) + 1,",
       "off by one: one step more than n_max_percentage allows"),
    _m("road", "imputation",
       'order="morf",',
       'order="lerf",',
       "MoRF and LeRF swapped"),
    _m("irof", "iterative_removal",
       'reduce="mean", streams=streams)',
       'reduce="sum", streams=streams)',
       "superpixels ranked by their summed instead of their mean relevance"),
    _m("irof", "iterative_removal",
       "scores = counts.double() - row_trapezoid(curve, counts)",
       "scores = (counts - 1).double() - row_trapezoid(curve, counts)",
       "off by one in the area over the curve (n - 1 instead of n)"),
    _m("irof", "iterative_removal",
       "_, ranks = ranked_features(a, feats",
       "_, ranks = ranked_features(-a, feats",
       "MoRF and LeRF swapped (least relevant superpixel removed first)"),
    # the shared perturbation engine (every perturbation metric's passes go through it)
    _m(ENGINE, "shared",
       'keys.append((mid, "p", img_d[ii], base_d[ii], digest))',
       'keys.append((mid, "p", img_d[ii], digest))',
       "cache key of a perturbed copy drops the baseline digest"),
    _m(ENGINE, "shared",
       'keys.append((mid, "x", base_d[ii]))',
       'keys.append((mid, "x", img_d[ii]))',
       "a copy that replaces every pixel is served as the image, not the baseline"),
    # robustness
    _m("max_sensitivity", "robustness",
       '"max_sensitivity",\n    how="max",',
       '"max_sensitivity",\n    how="mean",',
       "mean over the copies instead of the max"),
    _m("avg_sensitivity", "robustness",
       '"avg_sensitivity",\n    how="mean",',
       '"avg_sensitivity",\n    how="max",',
       "max over the copies instead of the mean"),
    _m("local_lipschitz", "robustness",
       "perturb_std: float = 0.1,",
       "perturb_std: float = 0.2,",
       "wrong default noise std (0.2 instead of Quantus's 0.1)"),
    _m("relative_input_stability", "stability",
       "den = _norm(_relative(x_noisy.double(), x.double(), eps_min), eps_min)",
       "den = _norm(x_noisy.double() - x.double(), eps_min)",
       "absolute instead of relative change of the input"),
    _m("relative_output_stability", "stability",
       "den = _norm(logits0[i] - logits, eps_min)",
       "den = _norm(logits0[i].softmax(-1) - logits.softmax(-1), eps_min)",
       "softmax probabilities instead of logits"),
    _m("relative_representation_stability", "stability",
       "den = _norm(_relative(rep, rep0[i], eps_min), eps_min)",
       "den = _norm(rep0[i] - rep, eps_min)",
       "absolute instead of relative change of the representation"),
    _m("continuity", "translation",
       "dx = (2 * width + 1) // nr_steps",
       "dx = (2 * width) // nr_steps",
       "off by one in the translation step"),
    _m("consistency", "agreement",
       "same_key = (keys.unsqueeze(1) == keys.unsqueeze(0)).all(-1) & others",
       "same_key = (keys.unsqueeze(1) == keys.unsqueeze(0)).any(-1) & others",
       "wrong reduction: one equal key entry counts as the same explanation"),
    _m("focus", "mosaic",
       "target = order < 2",
       "target = order <= 2",
       "off by one: three quadrants counted as the target class"),
    # randomisation
    _m("mprt", "randomisation",
       'if order == "top_down":\n        groups = groups[::-1]',
       'if order == "bottom_up":\n        groups = groups[::-1]',
       "top-down and bottom-up swapped"),
    _m("random_logit", "randomisation",
       "other = draw + (draw >= labels).long()",
       "other = draw + (draw > labels).long()",
       "off by one: the 'other' class can be the label itself"),
    _m("smooth_mprt", "mprt_variants",
       "if k < nr_samples - 1:",
       "if k < nr_samples:",
       "off by one: the noise-free sample is noised too"),
    _m("efficient_mprt", "mprt_variants",
       "score = (h_b - h_a) / torch.where(bad, torch.ones_like(h_a), h_a)",
       "score = (h_a - h_b) / torch.where(bad, torch.ones_like(h_a), h_a)",
       "sign flipped: entropy loss instead of gain"),
    # axiomatic
    _m("completeness", "axiomatic",
       "delta = both[: images.shape[0]] - both[images.shape[0] :]",
       "delta = both[images.shape[0] :] - both[: images.shape[0]]",
       "sign flipped: f(baseline) - f(x)"),
    _m("non_sensitivity", "axiomatic",
       "indifferent = ((ys - y0.unsqueeze(1)).abs() < eps)[:, feature_group]",
       "indifferent = ((ys - y0.unsqueeze(1)) < eps)[:, feature_group]",
       "abs dropped: an output drop counts as no change"),
    _m("input_invariance", "axiomatic",
       "offset = (layer(probe + shift) - layer(probe)).detach()",
       "offset = (layer(probe) - layer(probe + shift)).detach()",
       "sign flipped: the bias shift doubles the input shift"),
    # --- a second defect for most metrics (labels name:2) ---
    _m("pointing_game", "localisation",
       "hit = hit * (1 - s.sum(1) / s.shape[1])",
       "hit = hit * (s.sum(1) / s.shape[1])",
       "weighted hit by the mask share instead of 1 - share"),
    _m("average_precision", "localisation",
       "values, order = torch.sort(-a, dim=1, stable=True)",
       "values, order = torch.sort(a, dim=1, stable=True)",
       "thresholds walked from the lowest value up"),
    _m("iou", "localisation",
       "score = inter / (b.sum(1) + s.sum(1) - inter).clamp_min(1)",
       "score = inter / (b.sum(1) + s.sum(1)).clamp_min(1)",
       "union counts the intersection twice"),
    _m("f1_at_quarter_max", "localisation",
       "tau: float = 0.25",
       "tau: float = 0.5",
       "wrong default threshold (half max instead of quarter max)"),
    _m("sparseness", "concentration",
       "a = sort_values(a).double() + 1e-7",
       "a = sort_values(a).flip(-1).double() + 1e-7",
       "values sorted descending: the Gini weights change sign"),
    _m("complexity", "concentration",
       "score = -(share * torch.log(share + 1e-12)).sum(1)",
       "score = -(share * torch.log2(share + 1e-12)).sum(1)",
       "entropy in bits instead of nats"),
    _m("monotonicity_correlation", "faithfulness",
       "atts = csum.gather(1, counts) - csum.gather(1, starts)",
       "atts = csum.gather(1, counts)",
       "cumulative relevance instead of the step's own"),
    _m("infidelity", "faithfulness",
       "a_sums = per_block.cumsum(1)",
       "a_sums = per_block",
       "predicted drop of the last patch only, not of all patches removed so far"),
    _m("sufficiency", "faithfulness",
       "ranks, n_features = _ranks(a, images, feats, descending=True, streams=streams)",
       "ranks, n_features = _ranks(a, images, feats, descending=False, streams=streams)",
       "keeps the least relevant pixels (LeRF instead of MoRF)"),
    _m("region_perturbation", "regions",
       "n_variants=counts.clamp(max=regions_evaluation),",
       "n_variants=counts.clamp(max=regions_evaluation) - 1,",
       "off by one: one region fewer than regions_evaluation"),
    _m("selectivity", "regions",
       'return _nan_for_constant("selectivity", maps, row_trapezoid(ys, counts), abs=abs)',
       'return _nan_for_constant("selectivity", maps, ys.double().nansum(1), abs=abs)',
       "rectangle sum instead of the trapezoid"),
    _m("faithfulness_estimate", "estimates",
       "softmax: bool = False,",
       "softmax: bool = True,",
       "wrong default: probabilities instead of Quantus's logits"),
    _m("road", "imputation",
       "removed = ranks[i] < int(n_features[i] * p / 100)",
       "removed = ranks[i] <= int(n_features[i] * p / 100)",
       "off by one: removes one pixel too many at every level"),
    _m("max_sensitivity", "robustness",
       "noise=uniform_noise(low=-lower_bound, high=lower_bound),",
       "noise=uniform_noise(low=0.0, high=lower_bound),",
       "one-sided noise U(0, r) instead of U(-r, r)"),
    _m("avg_sensitivity", "robustness",
       "value = diff / torch.linalg.vector_norm(a[i], dim=1)",
       "value = diff",
       "normalisation by ||a|| dropped"),
    _m("local_lipschitz", "robustness",
       'per="input",',
       'per="map",',
       "divides by ||a|| instead of ||x - x'||"),
    _m("relative_input_stability", "stability",
       "score = torch.nan_to_num(out, nan=0.0).amax(1)",
       "score = torch.nan_to_num(out, nan=0.0).mean(1)",
       "mean over the copies instead of the max"),
    _m("relative_output_stability", "stability",
       "changed = logits.argmax(1) != logits0[i].argmax(1)",
       "changed = logits.argmax(1) != labels[i]",
       "prediction change judged against the label, not the prediction"),
    _m("relative_representation_stability", "stability",
       "return (ref - new) / (ref + (ref == 0) * eps_min)",
       "return (ref - new) / (new + (new == 0) * eps_min)",
       "relative change divided by the perturbed value"),
    _m("continuity", "translation",
       "l1 = (a[i] - a_moved).abs().sum(1)",
       "l1 = torch.linalg.vector_norm(a[i] - a_moved, dim=1)",
       "L2 instead of L1 distance of the maps"),
    _m("consistency", "agreement",
       "others = ~torch.eye(len(keys), dtype=torch.bool, device=device)",
       "others = torch.ones(len(keys), len(keys), dtype=torch.bool, device=device)",
       "an image counts as its own match"),
    _m("focus", "mosaic",
       "a = a.abs() if abs else a.clamp_min(0)",
       "a = a.abs() if abs else a",
       "negative relevance not clipped"),
    _m("mprt", "randomisation",
       "torch.manual_seed(seed + 1 + i)",
       "torch.manual_seed(seed + i)",
       "off by one in the per-layer seed"),
    _m("random_logit", "randomisation",
       "torch.randint(0, num_classes - 1, (), generator=g, device=g.device)",
       "torch.randint(0, num_classes, (), generator=g, device=g.device)",
       "off by one: the drawn class can be num_classes"),
    _m("smooth_mprt", "mprt_variants",
       "std = noise_magnitude * (flat.amax(1) - flat.amin(1))",
       "std = noise_magnitude * flat.amax(1)",
       "noise scaled by the max instead of the range"),
    _m("efficient_mprt", "mprt_variants",
       "n_bins: int = 100,",
       "n_bins: int = 10,",
       "wrong default number of bins"),
    _m("completeness", "axiomatic",
       "torch.cat([labels, labels]), softmax=False,",
       "torch.cat([labels, labels]), softmax=True,",
       "probabilities instead of logits"),
    _m("non_sensitivity", "axiomatic",
       "return ((indifferent ^ zero) & present).sum(1).double()",
       "return ((indifferent & zero) & present).sum(1).double()",
       "counts agreements instead of violations"),
    _m("input_invariance", "axiomatic",
       "return close.flatten(1).all(1).double()",
       "return close.flatten(1).any(1).double()",
       "wrong reduction: one equal pixel makes the maps equal"),
)  # fmt: skip


def labels() -> dict[str, Mutation]:
    """Each mutation under its label: the metric name, ``name:2``, ... for further entries."""
    out: dict[str, Mutation] = {}
    for m in MUTATIONS:
        label, k = m.metric, 1
        while label in out:
            k += 1
            label = f"{m.metric}:{k}"
        out[label] = m
    return out


def unmutated(registered: Iterable[str]) -> list[str]:
    """The registered metric names that have no entry in :data:`MUTATIONS`."""
    covered = {m.metric for m in MUTATIONS} - PSEUDO_METRICS
    return [name for name in registered if name not in covered]


# --- the pytest plugin half: active only in a child pytest with CONCILIUM_MUTATION set ---


class _MutatedLoader(importlib.machinery.SourceFileLoader):
    """Compiles the module's source with one replacement (never reading or writing a .pyc)."""

    def __init__(self, fullname: str, path: str, mutation: Mutation, finder: MutatingFinder):
        super().__init__(fullname, path)
        self.mutation = mutation
        self.finder = finder

    def get_code(self, fullname: str) -> Any:
        source = self.get_data(self.path).decode("utf-8")
        found = source.count(self.mutation.old)
        if found != 1:
            raise ImportError(
                f"mutation of {self.mutation.module}: the old text occurs {found} times, not once"
            )
        self.finder.applied = True
        mutated = source.replace(self.mutation.old, self.mutation.new)
        return compile(mutated, self.path, "exec", dont_inherit=True)


class MutatingFinder(importlib.abc.MetaPathFinder):
    """Finds ``mutation.module`` on the normal path and loads it through :class:`_MutatedLoader`."""

    def __init__(self, mutation: Mutation):
        self.mutation = mutation
        self.applied = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.mutation.module:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = _MutatedLoader(fullname, spec.origin, self.mutation, self)
        return spec


def install(label: str) -> MutatingFinder:
    """Put the import hook of mutation ``label`` first on ``sys.meta_path``.

    Raises:
        ValueError: for an unknown label, or a module already imported (too late to mutate).
    """
    table = labels()
    if label not in table:
        raise ValueError(f"unknown mutation {label!r}; known: {', '.join(table)}")
    mutation = table[label]
    if mutation.module in sys.modules:
        raise ValueError(f"{mutation.module} is already imported; load this plugin first (-p)")
    finder = MutatingFinder(mutation)
    sys.meta_path.insert(0, finder)
    return finder


_FINDER = install(os.environ[ENV]) if os.environ.get(ENV) else None


def pytest_report_header(config: Any) -> str | None:
    """Say which mutation this pytest runs under."""
    return f"metric mutation: {os.environ[ENV]}" if _FINDER is not None else None


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """A run whose mutation was never compiled (module not imported) is an error, not a pass."""
    if _FINDER is not None and not _FINDER.applied:
        print(f"\nmetric mutation {os.environ[ENV]}: module never imported", file=sys.stderr)
        session.exitstatus = 3


# --- the driver ---


@dataclass(frozen=True)
class Outcome:
    """The result of one mutation."""

    label: str
    mutation: Mutation
    result: str  # "killed", "survived" or "error"
    first_failure: str
    seconds: float


_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def run_one(label: str, mutation: Mutation, *, timeout: float = 900) -> Outcome:
    """Run ``mutation``'s tests in a fresh pytest process with the mutation applied."""
    start = time.perf_counter()
    found = mutation.occurrences()
    if found != 1:
        return Outcome(label, mutation, "error", f"old text occurs {found} times", 0.0)
    env = {
        **os.environ,
        ENV: label,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(Path(__file__).parent)]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    cmd = [
        sys.executable, "-m", "pytest", *PYTEST_ARGS, "-p", Path(__file__).stem,
        *mutation.tests,
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return Outcome(label, mutation, "error", "timed out", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    failed = _FAILED.search(output)
    if failed and "::" not in failed.group(1):  # a module that failed to import or collect
        return Outcome(label, mutation, "error", f"collection: {failed.group(1)}", seconds)
    if proc.returncode == 1:
        return Outcome(label, mutation, "killed", failed.group(1) if failed else "?", seconds)
    if proc.returncode == 0:
        return Outcome(label, mutation, "survived", "", seconds)
    tail = output.strip().splitlines()[-1:] or [""]
    return Outcome(label, mutation, "error", f"pytest exit {proc.returncode}: {tail[0]}", seconds)


def registered_metrics() -> list[str]:
    """The registered metric names, read in a child process (this module never imports
    concilium, so that, as a plugin, it is loaded before any metric module)."""
    out = subprocess.run(
        [sys.executable, "-c", "from concilium.metrics import METRICS; print(*METRICS.names())"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def table(outcomes: Sequence[Outcome]) -> str:
    """The markdown table of the outcomes."""
    rows = [
        "| metric | mutation | tests run | result | first failing test | s |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        tests = ", ".join(
            Path(t).stem.removeprefix("test_") for t in o.mutation.tests if t not in METRIC_TESTS
        )
        tests = f"{tests} + common" if tests else "common"
        rows.append(
            f"| `{o.label}` | {o.mutation.what.replace('|', '&#124;')} "
            f"(`{o.mutation.module.rsplit('.', 1)[-1]}`) "
            f"| {tests} | {o.result} | {f'`{o.first_failure}`' if o.first_failure else ''} "
            f"| {o.seconds:.0f} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mutations, print the table and write it to :data:`RESULTS`.

    Returns:
        0 when every mutation was killed and every registered metric has one, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="metric names or labels")
    parser.add_argument("--jobs", type=int, default=1, help="pytest processes at once (max 2)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(argv)
    if not 1 <= args.jobs <= 2:
        parser.error("--jobs must be 1 or 2 (the machine has 2 cores)")
    chosen = {
        label: m
        for label, m in labels().items()
        if not args.only or label in args.only or m.metric in args.only
    }
    if args.only and not chosen:
        parser.error(f"no mutation matches {args.only}; metrics: {sorted(labels())}")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, label, m) for label, m in chosen.items()]
        outcomes = []
        for future in futures:
            outcome = future.result()
            print(f"{outcome.label}: {outcome.result} {outcome.first_failure}", flush=True)
            outcomes.append(outcome)
    elapsed = time.perf_counter() - start
    missing = unmutated(registered_metrics())
    counts = {r: sum(o.result == r for o in outcomes) for r in ("killed", "survived", "error")}
    command = "python experiments/metric_mutations.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report = "\n".join(
        [
            "# Metric mutations",
            "",
            f"Command: `{command.strip()}`, {elapsed / 60:.1f} min with {args.jobs} job(s); "
            f"pytest {' '.join(PYTEST_ARGS)}; each mutation runs its family's tests (named "
            f"in the table) and then the common ones: {', '.join(METRIC_TESTS)}.",
            "",
            f"{len(outcomes)} mutations: {counts['killed']} killed, {counts['survived']} survived, "
            f"{counts['error']} errors. Registered metrics without a mutation: "
            f"{', '.join(missing) if missing else 'none'}.",
            "",
            table(outcomes),
            "",
        ]
    )
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    return 0 if counts["killed"] == len(outcomes) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
