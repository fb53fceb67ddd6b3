"""Single-machine federations: spec -> Flower simulation (or in-process) -> report."""
