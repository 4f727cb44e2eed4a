"""mlblueprints."""
