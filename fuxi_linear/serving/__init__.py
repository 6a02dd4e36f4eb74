"""The serving loop: :class:`Decoder` admits, evicts and steps users of one FuXi-Linear model over a pool of
decode states (CUDA graphs on a GPU), and saves / loads the pool as atomic on-disk snapshots
(:mod:`fuxi_linear.serving.snapshots`)."""
from .decoder import Decoder, batch_buckets
from .snapshots import current_snapshot, read_snapshot, write_snapshot

__all__ = ["Decoder", "batch_buckets", "write_snapshot", "read_snapshot", "current_snapshot"]
