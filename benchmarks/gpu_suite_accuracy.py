"""GPU suite section ``accuracy``: the Triton kernels at the channels' production shapes in float32 and
bfloat16 against float64, forward (output, final state) and backward (every input gradient).

The float64 oracle is the CPU path (the chunked PyTorch form) run in float64 on the same values (for bfloat16 the
bfloat16-rounded inputs, so the figure is the operator's error, not the rounding of its inputs); the loss
``sum(o * do) + sum(h_T * dh_T)`` with random ``do``, ``dh_T`` drives the gradients, the final-state path
included. Errors are relative RMS, ``||x - x64|| / ||x64||``. The temporal channel (per-token decay) runs
with mild decays and with strong ones (``g = -20`` on 30% of the steps), where chunk-local cumulative decays
lose precision to cancellation. float32 runs at torch's default matmul precision ("highest": TF32x3 products).
``kernels`` names the kernel family the launcher picks (the temporal shape runs the small-head kernels, in
bfloat16 only on a GPU: the CPU interpreter computes bfloat16 through float32 copies).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import torch

from fuxi_linear.kernels import configs
from fuxi_linear.ops import chunk_decay_attention, chunk_decay_attention_cpu
from gpu_suite_common import CHANNELS, DTYPES, Log, Row, make_channel_inputs, progress, rel_rms, time_left

#: (B, T): the long-batch shape and the single long history
SIZES = ((64, 1024), (1, 8192))
DRY_RUN_SIZES = ((2, 40),)
#: relative RMS targets: float32 as the kernel tests' tolerance, bfloat16 as issue 8's target
TARGETS = {"fp32": 1e-5, "bf16": 2e-2}
REFERENCE_CHUNK = 64


def _cases(dry_run: bool) -> List[Tuple[str, int, int, str, str]]:
    cases = []
    for B, T in DRY_RUN_SIZES if dry_run else SIZES:
        for channel, shape in CHANNELS.items():
            decays = ("mild", "strong") if shape.decay == "g" else (shape.decay or "none",)
            for decay in decays:
                for dtype in TARGETS:
                    cases.append((channel, B, T, dtype, decay))
    return cases


def _loss_and_grads(out: Tuple[torch.Tensor, torch.Tensor], do: torch.Tensor, dht: torch.Tensor,
                    leaves: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    o, ht = out
    acc = torch.float64 if o.dtype == torch.float64 else torch.float32
    loss = (o.to(acc) * do.to(acc)).sum() + (ht.to(acc) * dht.to(acc)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads))


def measure_case(channel: str, B: int, T: int, dtype: str, decay: str, device: torch.device,
                 seed: int = 0) -> Row:
    inputs = make_channel_inputs(channel, B, T, DTYPES[dtype], device, seed, strong_decay=decay == "strong",
                                 requires_grad=True)
    oracle_inputs = {name: x.detach().double().requires_grad_(True) for name, x in inputs.items()}
    out = chunk_decay_attention(**inputs, scale=1.0, output_final_state=True, backend="triton")
    ref = chunk_decay_attention_cpu(**oracle_inputs, scale=1.0, output_final_state=True,
                                    chunk_size=REFERENCE_CHUNK)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    # the cotangents in the kernel's dtypes, and the very same values for the oracle
    do = torch.randn(out[0].shape, generator=gen, device=device).to(out[0].dtype)
    dht = torch.randn(out[1].shape, generator=gen, device=device).to(out[1].dtype)
    grads = _loss_and_grads(out, do, dht, inputs)
    ref_grads = _loss_and_grads(ref, do.double(), dht.double(), oracle_inputs)
    errors = {"out": rel_rms(out[0], ref[0]), "state": rel_rms(out[1], ref[1])}
    for name in ("q", "k", "v", "g", "g_gamma"):
        key = "d" + ("g" if name.startswith("g") else name)
        errors[key] = rel_rms(grads[name], ref_grads[name]) if name in grads else None
    worst = max(e for e in errors.values() if e is not None)
    return {
        **errors,
        "worst": worst,
        "target": TARGETS[dtype],
        "meets_target": worst <= TARGETS[dtype],
    }


def run_accuracy_section(device: torch.device, dry_run: bool, peak_gbs: Optional[float], log: Log) -> List[Row]:
    rows = []
    cases = _cases(dry_run)
    precision = torch.get_float32_matmul_precision()
    for channel, B, T, dtype, decay in progress(cases, "accuracy"):
        shape = CHANNELS[channel]
        family = "small-head" if configs.uses_small_heads(shape.k, shape.v) else "general"
        row: Row = {"channel": channel, "kernels": family, "B": B, "T": T, "dtype": dtype, "decay": decay,
                    "fp32_matmul": precision if dtype == "fp32" else None}
        if time_left() < 5:
            rows.append({**row, "status": "skipped: time budget"})
            continue
        t0 = time.monotonic()
        result = measure_case(channel, B, T, dtype, decay, device)
        rows.append({**row, "status": "ok", **result, "seconds": round(time.monotonic() - t0, 2)})
        log(f"[accuracy] {channel} B={B} T={T} {dtype} {decay}: worst rel RMS {result['worst']:.2e} "
            f"(target {result['target']:.0e})")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
