"""Models that leave the pipeline: ONNX and TorchScript files, their preprocessing contract, the parity check."""
