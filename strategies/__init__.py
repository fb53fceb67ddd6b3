"""How the coordinator merges what sites send: the aggregation rules, one per file, no I/O."""
