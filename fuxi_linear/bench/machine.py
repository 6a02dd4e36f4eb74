"""The machine a benchmark runs on: device name, library versions, threads and load, and the datasheet memory
bandwidth of known GPUs (the reference of the decode "% of peak")."""
from __future__ import annotations

import os
import platform
from typing import Any, Dict, Optional, Tuple

import torch

#: Nominal (datasheet) HBM/GDDR bandwidth in GB/s by device-name fragment, first match wins (most specific
#: first: "GH200" contains "H200"; None: the name does not determine it); the bench's
#: "% of peak" uses it unless --peak-gbs is given. Nominal peaks: measured copy bandwidth is ~85-92% of them.
PEAK_BANDWIDTH_GBS: Tuple[Tuple[str, Optional[float]], ...] = (
    ("GH200", None),  # Grace Hopper: 4.0 or 4.9 TB/s by memory variant, which the name does not tell
    ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("H800", 3350.0),
    ("B200", 8000.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
    ("A800", 2039.0), ("L40S", 864.0), ("L40", 864.0), ("L4", 300.0), ("A10G", 600.0), ("A10", 600.0),
    ("V100", 900.0), ("RTX 4090", 1008.0), ("RTX 3090", 936.0),
)


def nominal_peak_gbs(device_name: str) -> Optional[float]:
    """The datasheet memory bandwidth of a GPU by name (:data:`PEAK_BANDWIDTH_GBS`), or None if unknown."""
    for fragment, gbs in PEAK_BANDWIDTH_GBS:
        if fragment.lower() in device_name.lower():
            return gbs
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: torch.device, dtype: str) -> Dict[str, Any]:
    """Device name, library versions, dtype and threads of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # not installed, or no driver
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "triton": triton_version,
            "dtype": dtype, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": load}


def machine_line(info: Dict[str, Any]) -> str:
    return (f"machine: {info['device']} ({info['device_name']}) | torch {info['torch']} | "
            f"triton {info['triton'] or 'not available'} | dtype {info['dtype']} | {info['threads']} torch threads "
            f"({info['cpu_count']} CPUs"
            + (f", load average {info['load_average'][0]:.1f}" if info.get("load_average") else "") + ")")
