"""Pure protocol functions over replicated share pairs, grouped by family."""
