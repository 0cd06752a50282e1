"""Per-model-family patchers (one module per family)."""
