"""The data phase: download, split and crop stages (data/raw, data/split, data/crops)."""
