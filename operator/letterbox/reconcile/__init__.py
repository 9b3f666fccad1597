"""Level-triggered reconciliation: gather → render → diff → apply → status."""
