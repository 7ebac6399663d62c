"""``krr``: out-of-fold kernel ridge regression from one source's methods to the masks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from concilium.ensemble.krr import krr_ensemble
from concilium.jobs.ensemble.base import (
    Absolute,
    EnsembleOptionsBase,
    EnsembleResult,
    FromSource,
    Normalisation,
    ensembler,
    source_maps,
    write_entry,
)
from concilium.store import Run


class KrrOptions(EnsembleOptionsBase):
    """Options of ``krr`` (see :func:`concilium.ensemble.krr.krr_ensemble`)."""

    from_source: FromSource = None
    normalisation: Normalisation = "max_abs"
    absolute: Absolute = False
    folds: int = Field(5, ge=2, description="out-of-fold image folds")
    alpha: float = Field(1.0, gt=0, description="ridge regularisation")
    kernel: Literal["rbf", "linear", "laplacian", "polynomial"] = Field(
        "rbf", description="kernel of sklearn's KernelRidge")
    gamma: float | None = Field(
        None, description="kernel coefficient (default: scikit-learn's, 1 / n_features)")
    pixels_per_image: int = Field(32, ge=1, description="pixels sampled per training image")
    positional: bool = Field(False, description="add each pixel's (row, column) to its features")
    seed: int = Field(0, description="seeds the fold split and the pixel sampling")


@ensembler("krr", options=KrrOptions)
def run_krr(run: Run, options: KrrOptions) -> EnsembleResult:
    """Out-of-fold kernel ridge regression from one source's methods to the masks."""
    src, methods, maps, hashes = source_maps(run, options.from_source, options.methods)
    o = options
    out = krr_ensemble(maps, run.data.masks, normalisation=o.normalisation, absolute=o.absolute,
                       folds=o.folds, alpha=o.alpha, kernel=o.kernel, gamma=o.gamma,
                       pixels_per_image=o.pixels_per_image, positional=o.positional, seed=o.seed)
    params = {"from": src, "inputs": hashes, "normalisation": o.normalisation,
              "absolute": o.absolute, "folds": o.folds, "alpha": o.alpha, "kernel": o.kernel,
              "gamma": o.gamma, "pixels_per_image": o.pixels_per_image,
              "positional": o.positional, "seed": o.seed}
    return EnsembleResult([write_entry(run, "krr", "+".join(methods), out, source=o.source,
                                       params=params)])
