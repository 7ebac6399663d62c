"""concilium.store (filled in by its issue)."""
