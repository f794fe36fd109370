"""The model: CarNet and its backbones, pretrained weights, the checkpoint format (``best.pt``) and inference
preprocessing. Training (carbench.train) and every phase that loads a trained model (retrieval, report, predict)
import it; it imports only the core, so a change to training alone (augmentation, mixing, losses, the freeze
schedule) leaves the stages that only load models unchanged in `dvc status`."""
