"""concilium.ensemble (filled in by its issue)."""
