"""The coordinator: ServerApp round loop, server model, evaluation, checkpoints, run store."""
