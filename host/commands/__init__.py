"""The `edgefleet` CLI's command groups, one module per group."""
