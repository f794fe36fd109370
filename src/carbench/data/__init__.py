"""The data phase: the raw format (data/raw), the split and crop stages (data/split, data/crops) and their previews."""
