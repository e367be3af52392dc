"""fedge benchmarks: scripts that print figures measured in one run."""
