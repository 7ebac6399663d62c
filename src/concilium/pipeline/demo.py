"""The embedded demo experiment of ``concilium demo`` (the same ``run`` machinery).

The benchmark has a rare class and a watermark class; an 11-member head ensemble (the ensembles
paper) is explained on the test split with the paper's five methods plus SmoothGrad and
Occlusion; a 5-member mixed-architecture committee (small-cnn / resnet18-small / vgg11-small)
gives the consensus study; every ensemble is built, every metric family evaluated, the audits
run and the report written. ``quick`` shrinks everything to a smoke test of a couple of minutes.
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
]
"""Every localisation and complexity metric, and the faithfulness, robustness and
randomisation metrics whose cost fits a CPU demo (with the parameters below)."""
DEMO_METRIC_PARAMS: dict[str, dict[str, Any]] = {
    "faithfulness_correlation": {"nr_runs": 20, "subset_size": 32},
    "monotonicity": {"step": 5, "unit": "percent"},
    "road": {"percentages": [10, 30, 50, 70, 90]},
    "max_sensitivity": {"nr_samples": 4},
    "avg_sensitivity": {"nr_samples": 4},
    "local_lipschitz": {"nr_samples": 4},
}


def demo_values(*, quick: bool = False) -> dict[str, Any]:
    """The demo experiment as a plain mapping (what ``examples/benchmark.toml`` spells out)."""
    n, size = (480, 32) if quick else (3000, 32)
    explain_limit = 32 if quick else 300
    return {
        "name": "concilium demo" + (" (quick)" if quick else ""),
        "data": {"kind": "synthetic", "n": n, "size": size, "num_classes": 6, "seed": 0,
                 "rare_class": 5, "rare_fraction": 0.04 if quick else 0.03,
                 "watermark_class": 1, "watermark_rate": 0.9,
                 "split_fractions": [0.6, 0.1, 0.3] if quick else [0.7, 0.1, 0.2]},
        "models": {"arch": "small-cnn", "members": 11 if not quick else 3, "diversity": "head",
                   "epochs": 8 if not quick else 3, "attributes": True,
                   "batch_size": 64 if not quick else 32},
        "committee": {
            "models": {"diversity": "arch", "members": 5 if not quick else 3,
                       "archs": (["small-cnn", "vgg11-small", "resnet18-small"] if not quick
                                 else ["small-cnn", "vgg11-small"]),
                       "epochs": 4 if not quick else 1, "batch_size": 64 if not quick else 32},
            "methods": ["smoothgrad"],
            "params": {"smoothgrad": {"n_samples": 16 if not quick else 4}},
            "limit": explain_limit,
        },
        "explain": {
            "methods": DEMO_METHODS, "split": "all", "limit": (3 if quick else 4) * explain_limit,
            "params": {
                "integrated_gradients": {"n_steps": 4 if quick else 32},
                "gradient_shap": {"n_samples": 4 if quick else 16},
                "smoothgrad": {"n_samples": 4 if quick else 16},
                "occlusion": {"window": 8, "stride": 8 if quick else 4},
            },
        },
        "ensemble": {
            "kinds": ["ens-avg", "ens-logit", "aggregate", "cnn"],
            "options": {"cnn": {"cnn": {"epochs": 4 if quick else 30,
                                        "patience": 3 if quick else 8}}},
        },
        "evaluate": {"metrics": DEMO_METRICS, "params": DEMO_METRIC_PARAMS,
                     "limit": explain_limit, "costly_limit": 4 if quick else 32},
        "audit": {"anonymisation": True, "anonymisation_epochs": 1 if quick else 3},
        "report": {"gallery_images": 3 if quick else 4},
    }


def demo_config(*, quick: bool = False) -> ExperimentConfig:
    """The validated demo experiment."""
    return parse_config(demo_values(quick=quick))
