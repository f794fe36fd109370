"""The train phase: the train@<name> stage (models/<name>/best.pt)."""
