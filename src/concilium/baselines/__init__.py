"""Learned counterfactual baselines for attribution methods (see :mod:`concilium.baselines.ganmex`)."""
