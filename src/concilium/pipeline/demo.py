"""The embedded demo experiment of ``concilium demo`` (the same ``run`` machinery).

The benchmark has a rare class and a watermark class; an 11-member head ensemble (the ensembles
paper) with attribute heads is explained with the paper's five methods plus SmoothGrad and
Occlusion; a 15-member mixed-architecture committee (small-cnn / vgg11-small / resnet18-small,
one epoch each) gives the consensus study; every ensemble kind that fits a CPU is built, every
metric family is evaluated, the audits run and the report is written. ``quick`` shrinks every
count to a smoke test (same stages, same code paths). ``examples/benchmark.toml`` spells out
the full demo.
"""

from __future__ import annotations

from typing import Any

from concilium.pipeline.config import ExperimentConfig, parse_config

DEMO_METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "gradient_shap",
                "gradcam", "smoothgrad", "occlusion"]
DEMO_METRICS = [
    "localisation", "complexity",
    "deletion", "insertion", "aopc", "faithfulness_correlation", "monotonicity", "sufficiency",
    "road", "max_sensitivity", "avg_sensitivity", "local_lipschitz", "mprt", "random_logit",
    "efficient_mprt", "completeness", "input_invariance",
]
"""Every localisation and complexity metric, and the faithfulness, robustness, randomisation
and axiomatic metrics whose cost fits a CPU demo (with the parameters below)."""
QUICK_METRICS = ["localisation", "complexity", "deletion", "faithfulness_correlation",
                 "max_sensitivity", "random_logit", "completeness"]
"""The quick demo: every family still, with one or two model-bound metrics each."""


def demo_values(*, quick: bool = False) -> dict[str, Any]:
    """The demo experiment as a plain mapping (``examples/benchmark.toml`` is the full one)."""
    q = quick
    return {
        "name": "concilium demo" + (" (quick)" if q else ""),
        "data": {"kind": "synthetic", "n": 360 if q else 2000, "size": 32, "num_classes": 6,
                 "seed": 0, "rare_class": 5, "rare_fraction": 0.04 if q else 0.03,
                 "watermark_class": 1, "watermark_rate": 0.9,
                 "split_fractions": [0.6, 0.1, 0.3] if q else [0.7, 0.1, 0.2]},
        "models": {"arch": "small-cnn", "members": 3 if q else 11, "diversity": "head",
                   "finetune": "head",
                   "epochs": 2 if q else 8, "attributes": True, "batch_size": 16 if q else 64},
        "committee": {
            "models": {"diversity": "arch", "members": 3 if q else 15,
                       "archs": (["small-cnn", "vgg11-small"] if q
                                 else ["small-cnn", "vgg11-small", "resnet18-small"]),
                       "epochs": 1, "batch_size": 16 if q else 64},
            "methods": ["smoothgrad"],
            "params": {"smoothgrad": {"n_samples": 4 if q else 8}},
            "limit": 16 if q else 80,
        },
        "explain": {
            "methods": DEMO_METHODS, "split": "all", "limit": 40 if q else 240,
            "params": {
                "integrated_gradients": {"n_steps": 4 if q else 16},
                "gradient_shap": {"n_samples": 4 if q else 8},
                "smoothgrad": {"n_samples": 4 if q else 8},
                "occlusion": {"window": 8, "stride": 8},
            },
        },
        "ensemble": {
            "kinds": ["ens-avg", "ens-logit", "aggregate", "cnn"],
            # cross-fitted E*: every row's map from an ensembler not fitted on it (audits)
            "options": {"cnn": {"epochs": 2 if q else 30, "patience": 2 if q else 8,
                                "crossfit": 3}},
        },
        "evaluate": {
            "metrics": QUICK_METRICS if q else DEMO_METRICS, "split": "test",
            "limit": 8 if q else 60, "costly_limit": 2 if q else 16,
            "params": {
                "faithfulness_correlation": {"nr_runs": 8 if q else 20, "subset_size": 32},
                "max_sensitivity": {"nr_samples": 2 if q else 4},
                **({} if q else {
                    "monotonicity": {"step": 5, "unit": "percent"},
                    "road": {"percentages": [10, 30, 50, 70, 90]},
                    "avg_sensitivity": {"nr_samples": 4},
                    "local_lipschitz": {"nr_samples": 4},
                }),
            },
        },
        "audit": {"anonymisation": True, "anonymisation_epochs": 1 if q else 3,
                  "attribute_cards": 1 if q else 3},
        "report": {"gallery_images": 1 if q else 4, "gallery_members": 3},
    }


def demo_config(*, quick: bool = False) -> ExperimentConfig:
    """The validated demo experiment."""
    return parse_config(demo_values(quick=quick))
