"""How the coordinator merges what sites send (Flower Strategy subclasses, no I/O)."""
