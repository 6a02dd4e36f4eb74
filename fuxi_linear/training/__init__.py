"""Training and evaluation runs (``fuxi-linear train`` / ``eval``) and what they rest on: the run's
configuration and presets, checkpoints, the objective, data-parallel sharding, precision and compile checks,
warm-up and early stopping, and the random streams that make a resumed run exact."""
from .train_and_evaluate import evaluate, evaluate_checkpoint, last_user_vectors, load_log, seed_everything, train
from .train_config import EXCLUDE_HISTORY_MODES, PRESETS, TrainConfig, model_kwargs
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint

__all__ = ["train", "evaluate", "evaluate_checkpoint", "load_log", "seed_everything", "last_user_vectors",
           "TrainConfig", "PRESETS", "EXCLUDE_HISTORY_MODES", "model_kwargs",
           "CHECKPOINT_FORMAT", "load_checkpoint", "model_from_checkpoint"]
