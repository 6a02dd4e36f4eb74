"""What a block of code does that would make a GPU wait for the host (read-backs, value-dependent shapes,
copies between devices), the ATen calls and kernel launches it makes: counted by structure, so on a CPU too."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

#: ATen operators that make the host wait for the device: reading a value back (``item``, ``int(t)``,
#: ``bool(t)``: all ``_local_scalar_dense``) and operators whose output size depends on values.
HOST_SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_dim",
                           "aten::_unique", "aten::_unique2", "aten::unique_consecutive", "aten::item"})
#: ATen operators that never launch a kernel (views and metadata).
_NO_KERNEL_OPS = frozenset({"aten::view", "aten::_unsafe_view", "aten::unsqueeze", "aten::squeeze", "aten::select",
                            "aten::slice", "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::narrow",
                            "aten::as_strided", "aten::t", "aten::transpose", "aten::permute", "aten::expand",
                            "aten::flatten", "aten::unflatten", "aten::alias", "aten::detach", "aten::resolve_conj",
                            "aten::resolve_neg", "aten::_reshape_alias", "aten::empty", "aten::lift_fresh"})


class HostSyncCounter:
    """Context manager counting what a block of code does that would synchronise a GPU with the host, by
    structure, so it works on a CPU too: every ATen call of :data:`HOST_SYNC_OPS` (seen by a
    ``TorchDispatchMode``), copies between devices, and calls of ``Tensor.item``/``tolist``/``__int__``/
    ``__float__``/``__bool__``/``__index__`` (``tolist`` of a CPU tensor reaches no ATen operator). Also counts
    ``aten_ops`` (every ATen call) and ``launches`` (ATen calls that are not views or metadata: on a GPU, about
    one kernel each). ``events`` lists the syncs seen.
    """

    _METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")

    def __init__(self) -> None:
        self.events: List[str] = []
        self.aten_ops = 0
        self.launches = 0
        self._saved: Dict[str, Any] = {}
        self._mode = None
        self._inside_method = 0  # a read-back method and the ATen call it makes are one sync

    @property
    def syncs(self) -> int:
        return len(self.events)

    def __enter__(self) -> "HostSyncCounter":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func._schema.name
                counter.aten_ops += 1
                if name not in _NO_KERNEL_OPS:
                    counter.launches += 1
                if name in HOST_SYNC_OPS:
                    if not counter._inside_method:
                        counter.events.append(name)
                elif name in ("aten::_to_copy", "aten::copy_"):
                    devices = {t.device for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
                    target = (kwargs or {}).get("device")
                    if target is not None:
                        devices.add(torch.device(target))
                    if len(devices) > 1:
                        counter.events.append(f"{name} across {sorted(map(str, devices))}")
                return func(*args, **(kwargs or {}))

        for method in self._METHODS:
            original = getattr(torch.Tensor, method)
            self._saved[method] = original

            def wrapped(tensor, *a, _original=original, _method=method, **k):
                if not counter._inside_method:
                    counter.events.append(f"Tensor.{_method}")
                counter._inside_method += 1
                try:
                    return _original(tensor, *a, **k)
                finally:
                    counter._inside_method -= 1

            setattr(torch.Tensor, method, wrapped)
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, original)
        self._saved.clear()


def count_cuda_kernel_launches(fn: Callable[[], Any], device: torch.device) -> int:
    """CUDA kernels (and memcpy/memset) that one call of ``fn`` launches, counted with ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
