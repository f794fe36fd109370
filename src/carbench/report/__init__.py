"""The report phase: evaluate@<name> and aggregate stages (metrics, plots, summary)."""
