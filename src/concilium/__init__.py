"""concilium: trustworthy saliency explanations of image classifiers.

Many explanation methods, many models, ensembled into better explanations and measured with a
full metric suite. Sub-packages show the architecture:

- :mod:`concilium.data`: the ground-truth benchmark and folder datasets.
- :mod:`concilium.models`: architectures, multitask heads, ensemble training, member folders.
- :mod:`concilium.explain`: attribution methods (Captum wrappers), baselines, targets.
- :mod:`concilium.baselines`: learned counterfactual baselines (GANMEX).
- :mod:`concilium.store`: the chunked, resumable explanation store.
- :mod:`concilium.metrics`: batched evaluation metrics of five families.
- :mod:`concilium.ensemble`: ensemblers of explanations and what they reveal.
- :mod:`concilium.report`: the HTML report.
- :mod:`concilium.pipeline`: the main job, from a configuration to a report.
"""

__version__ = "0.1.0"
