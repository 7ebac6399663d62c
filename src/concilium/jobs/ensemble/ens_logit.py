"""``ens-logit``: explain the model whose logits average the members' logits."""

from __future__ import annotations

import warnings

import torch

from concilium._util import derive_seed
from concilium.ensemble.averaging import ens_logit_maps, shared_layer
from concilium.explain import METHODS, explain
from concilium.jobs.ensemble.base import (
    EnsembleOptionsBase,
    EnsembleResult,
    Members,
    complete_methods,
    ensembler,
    member_sources,
    write_entry,
)
from concilium.store import Run

BATCH = 64


class EnsLogitOptions(EnsembleOptionsBase):
    """Options of ``ens-logit`` (each method is explained with the members' stored
    parameters)."""

    members: Members = None


@ensembler("ens-logit", options=EnsLogitOptions, needs_models=True)
def run_ens_logit(run: Run, options: EnsLogitOptions) -> EnsembleResult:
    """Ens-Logit: explain the averaged-logit model with each method's stored parameters."""
    members = member_sources(run, options.members)
    device = options.device
    models = [run.models[m].to(device).eval() for m in members]
    out = EnsembleResult()
    for method in complete_methods(run, members, options.methods):
        if method in METHODS and METHODS.get(method).needs_layer and method != "gradcam":
            layers = [getattr(m, "gradcam_layer", None) for m in models]
            if shared_layer(models, run.data.images[:8].to(device), layers) is None:
                warnings.warn(f"ens-logit skips {method!r}: a layer method other than gradcam "
                              "needs a layer the members share, and these members have none",
                              stacklevel=2)
                continue
        ref = run.store.get(members[0], method)
        p = ref.params
        maps = []
        for start in range(0, len(run.data), BATCH):
            images = run.data.images[start : start + BATCH].to(device)
            labels = run.data.labels[start : start + BATCH].to(device)
            gen = torch.Generator(device=images.device)
            gen.manual_seed(derive_seed(int(p.get("seed", run.seed)), "ens-logit", method, start))
            params = {"labels": labels, "reduction": p.get("reduction", "sum"),
                      "baseline": p.get("baseline", "zero"), "generator": gen,
                      **dict(p.get("method_params", {}))}
            maps.append(ens_logit_maps(models, images, p.get("target", run.target), method=method,
                                       params=params, explainer=explain).detach().cpu())
        params = {"members": members, "member_params_hash": ref.params_hash, "explain": p}
        out.entries.append(write_entry(run, "ens-logit", method, torch.cat(maps),
                                       source=options.source, params=params))
    return out
