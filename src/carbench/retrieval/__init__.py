"""The retrieval phase: embed@<name> and knn@<name> stages, and the inference API (predictor)."""
