"""Every model this package trains and benchmarks, by name (:func:`build_model`, :data:`MODEL_NAMES`), the
quadratic baselines (:mod:`fuxi_linear.models.baselines`), and the import of the authors' released FuXi-Linear
checkpoints (:mod:`fuxi_linear.models.released_checkpoint`). FuXi-Linear itself is :mod:`fuxi_linear.model`."""
from .registry import BASELINE_NAMES, MODEL_NAMES, build_model, model_config
from .released_checkpoint import config_from_official_state_dict, from_official_state_dict

__all__ = ["MODEL_NAMES", "BASELINE_NAMES", "build_model", "model_config",
           "from_official_state_dict", "config_from_official_state_dict"]
