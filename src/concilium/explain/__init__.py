"""concilium.explain (filled in by its issue)."""
