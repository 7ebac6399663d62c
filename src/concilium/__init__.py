"""concilium: trustworthy saliency explanations of image classifiers.

Many explanation methods, many models, ensembled into better explanations and measured with a
full metric suite. Sub-packages show the architecture, in layers (a layer imports only from the
layers before it; ``docs/ARCHITECTURE.md``):

- :mod:`concilium.vocabulary`, ``_util``, ``_checks``, ``_registry``: shared names, helpers,
  input checks and registries.
- :mod:`concilium.data`: the ground-truth benchmark, folder datasets and dataset specs.
- :mod:`concilium.models`: architectures, multitask heads, ensemble training, member folders.
- :mod:`concilium.explain`: attribution methods (Captum wrappers), baselines, targets.
- :mod:`concilium.ganmex`: learned counterfactual baselines (GANMEX).
- :mod:`concilium.metrics`: batched evaluation metrics of six families, the statistics of a
  metrics table and the verdicts of the headline claims.
- :mod:`concilium.ensemble`: ensemblers of explanations and what they reveal.
- :mod:`concilium.store`: everything under ``RUN/``: the chunked, resumable explanation store,
  the run record, the result tables and ``Run.open``.
- :mod:`concilium.jobs`: run-level work (explain, ensemble, evaluate, audit a run).
- :mod:`concilium.pipeline`: the main job, from a configuration to a report.
- :mod:`concilium.report`: the HTML report and its JSON summary.
- :mod:`concilium.cli`: the ``concilium`` command, one module per command.
"""

__version__ = "0.1.0"
