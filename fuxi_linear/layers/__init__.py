"""FuXi-Linear layers: the three channels, the multi-stage FFN and the block (SPEC §2-5)."""
from .block import FuXiLinearBlock
from .ffn import MultiStageFFN
from .norms import layer_norm, rms_norm
from .positional import LinearPositionalChannel, sinusoidal_table
from .retention import RetentionChannel
from .temporal import TemporalEncoding, TemporalFeatures, TemporalRetentionChannel, temporal_periods

__all__ = [
    "FuXiLinearBlock",
    "MultiStageFFN",
    "layer_norm",
    "rms_norm",
    "LinearPositionalChannel",
    "sinusoidal_table",
    "RetentionChannel",
    "TemporalEncoding",
    "TemporalFeatures",
    "TemporalRetentionChannel",
    "temporal_periods",
]
