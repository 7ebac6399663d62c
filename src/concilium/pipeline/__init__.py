"""concilium.pipeline (filled in by its issue)."""
