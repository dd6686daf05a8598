"""neve.compute: compute pools (catalog, placement) and the backends that run instances."""
