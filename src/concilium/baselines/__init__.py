"""concilium.baselines (filled in by its issue)."""
