"""The machine a benchmark runs on: device name, library versions, threads and load (:func:`load_snapshot`:
the load average and how many CPUs other processes keep busy), and the datasheet memory bandwidth of known
GPUs (the reference of the decode "% of peak")."""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

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


def _cpu_jiffies() -> Optional[Tuple[int, int]]:
    """``(busy, total)`` clock ticks of all CPUs since boot, from ``/proc/stat`` (None off Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # user nice system idle iowait irq softirq steal


def _own_jiffies() -> Optional[int]:
    """User + system clock ticks of this process (all its threads) since it started."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (OSError, ValueError, IndexError):
        return None


def load_snapshot(sample_s: float = 0.5) -> Dict[str, Any]:
    """The machine's load now: ``load_average`` (1, 5, 15 minutes) and ``busy_cpus``, the CPUs' worth of time
    that OTHER processes used during a ``sample_s`` pause of this one (from ``/proc/stat`` minus this process's
    own ticks; None where ``/proc`` is missing). On an idle machine ``busy_cpus`` is close to 0; a benchmark
    sharing its cores with a busy neighbour sees 1 or more."""
    try:
        load: Optional[List[float]] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    busy = None
    start, own_start = _cpu_jiffies(), _own_jiffies()
    if start is not None and own_start is not None:
        time.sleep(sample_s)
        end, own_end = _cpu_jiffies(), _own_jiffies()
        if end is not None and own_end is not None and end[1] > start[1]:
            cpus = os.cpu_count() or 1
            other = max(0, (end[0] - start[0]) - (own_end - own_start))
            busy = round(cpus * other / (end[1] - start[1]), 2)
    return {"load_average": load, "busy_cpus": busy}


def load_text(snapshot: Optional[Dict[str, Any]]) -> str:
    """``"load average 1.02, 0.95 CPUs busy with other processes"`` (what is known of it)."""
    if not snapshot:
        return "not recorded"
    parts = []
    if snapshot.get("load_average"):
        parts.append(f"load average {snapshot['load_average'][0]:.2f}")
    if snapshot.get("busy_cpus") is not None:
        parts.append(f"{snapshot['busy_cpus']:.2f} CPUs busy with other processes")
    return ", ".join(parts) or "not available on this system"


def machine_line(info: Dict[str, Any]) -> str:
    return (f"machine: {info['device']} ({info['device_name']}) | torch {info['torch']} | "
            f"triton {info['triton'] or 'not available'} | dtype {info['dtype']} | {info['threads']} torch threads "
            f"({info['cpu_count']} CPUs"
            + (f", load average {info['load_average'][0]:.1f}" if info.get("load_average") else "") + ")")
