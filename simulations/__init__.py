"""Many virtual clients on one machine, on Flower's simulation engine."""
