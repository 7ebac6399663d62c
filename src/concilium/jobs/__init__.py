"""Run-level work: each job opens a run (:meth:`concilium.store.Run.open`), computes with the
tensor-level library and writes back into ``RUN/``. The pipeline, the report and the CLI are thin
front ends over these jobs.

- :mod:`.explain`: explain members with methods into the store (:func:`~.explain.explain_run`).
- :mod:`.ensemble`: ensemble stored maps into new sources (:func:`~.ensemble.run_ensemble`).
- :mod:`.evaluate`: score every stored explanation (:func:`~.evaluate.evaluate_run`).
- :mod:`.audit`: per-class quality, bias, anonymisation, subsets (:func:`~.audit.run_audit`).
- :mod:`.attributes`: the attribute cards of a multitask member, run by the audit
  (:func:`~.attributes.run_attribute_cards`).
- :mod:`.baselines`: baseline specs resolved per member, learned baselines (GANMEX) included.
- :mod:`.engine`, :mod:`.ray_engine`, :mod:`.engines`: where explain and evaluate compute their
  units (in this process, or on Ray actors; ``ENGINES``, see ``docs/distributed.md``).
"""
