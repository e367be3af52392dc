"""The coordinator: a Flower ServerApp that aggregates, evaluates and checkpoints."""
