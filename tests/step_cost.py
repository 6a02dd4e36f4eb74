"""Work of one call counted at the ATen level, to check that a decode step is O(1) by construction."""
from typing import Any, Callable, Dict

import torch


def step_cost(fn: Callable[[], Any]) -> Dict[str, int]:
    """Work of one call, counted at the ATen level: ``"flops"`` (matmul-like ops, via
    ``torch.utils.flop_counter``), ``"elements"`` (total numel of every tensor each op reads or writes: a proxy
    for memory traffic), ``"max_numel"`` (the largest such tensor) and ``"ops"`` (ATen calls).
    An O(1) decode step gives the same numbers whatever the history length behind its state."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode

    class _Sizes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max_numel, self.ops, self.elements = 0, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            for t in tree_flatten((args, kwargs or {}, out))[0]:
                if isinstance(t, torch.Tensor):
                    self.max_numel = max(self.max_numel, t.numel())
                    self.elements += t.numel()
            return out

    sizes = _Sizes()
    flops = FlopCounterMode(display=False)
    with flops, sizes:
        fn()
    return {"flops": int(flops.get_total_flops()), "elements": sizes.elements, "max_numel": sizes.max_numel,
            "ops": sizes.ops}
