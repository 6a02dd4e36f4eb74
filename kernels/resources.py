"""Registers, spills and shared memory of every prefill kernel variant, compiled for a CUDA target (sm_90 by
default) on any machine: ``triton.compile`` with an explicit target needs no GPU (ptxas ships in the triton
wheel).

    python -m fuxi_linear.kernels.resources                  # every variant, a markdown table
    python -m fuxi_linear.kernels.resources --kernels fwd --json out.json

Variants: the three FuXi channel shapes (retention H=4 K=32 V=32 per-head decay; temporal H=16 K=2 V=8
per-token decay; positional H=1 K=32 V=128 shared q/k, no decay) x input dtype (float32 with the default
"tf32x3" products; bfloat16 with "tf32") x kernel (main kernels whole-sequence and split-T, the split-T
summary and scan kernels), with the launch configurations of :mod:`fuxi_linear.kernels.configs` (the forward
summary at the forward kernel's chunk length, the reverse one at the dk/dv kernel's: ``configs.summary_chunk``).
Arguments are typed as the launcher passes them (16-byte aligned pointers; strides of contiguous ``(B, T, H, .)``
tensors, marked divisible by 16 where they are and the JIT specialises them: not the batch strides, which are
never specialised). Registers, spill bytes and
stack come from the ptxas log of the compile itself (compiled afresh, the result also lands in the usual
triton cache), shared memory from Triton's metadata.

Works with triton 3.6 and 3.9 (``ASTSource(fn, signature, constexprs, attrs)``, ``GPUTarget``, the knobs
``compilation.always_compile`` and ``nvidia.dump_ptxas_log`` exist in both).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, List, Optional, Sequence

import triton
from triton.backends.compiler import GPUTarget

from . import configs
from .decay_mode import DecayMode
from .chunk_bwd import decay_attn_bwd_dkv_kernel, decay_attn_bwd_dq_kernel
from .chunk_fwd import decay_attn_fwd_kernel
from .segments import segment_scan_kernel, segment_summary_kernel
from .small_heads import small_heads_bwd_dkv_kernel, small_heads_bwd_dq_kernel, small_heads_fwd_kernel

__all__ = ["CHANNELS", "DTYPES", "KERNELS", "Variant", "Resources", "variants", "compile_variant", "main"]

#: The FuXi channel shapes: heads, head dims, decay mode, shared q/k.
CHANNELS = {
    "retention": dict(H=4, K=32, V=32, DECAY=DecayMode.PER_HEAD, shared=False),
    "temporal": dict(H=16, K=2, V=8, DECAY=DecayMode.PER_TOKEN, shared=False),
    "positional": dict(H=1, K=32, V=128, DECAY=DecayMode.NONE, shared=True),
}
#: Input dtype -> (Triton pointer type, ``tl.dot`` precision of float32 products as the launcher picks it):
#: float32 under torch's default matmul precision ("highest": "tf32x3") and under "high" ("tf32"), bfloat16.
DTYPES = {"fp32": ("fp32", "tf32x3"), "fp32_tf32": ("fp32", "tf32"), "bf16": ("bf16", "tf32")}
#: Kernel names: the main kernels (whole sequence, and split-T with boundary states) and the split-T helpers.
KERNELS = ("fwd", "bwd_dq", "bwd_dkv", "summary", "summary_rev", "scan", "scan_rev")
_T = 1024  # sequence length used for the strides (only their divisibility by 16 matters)


@dataclass(frozen=True)
class Variant:
    kernel: str
    channel: str
    dtype: str
    split: bool


@dataclass
class Resources:
    """One compiled variant: its name and configuration, and what ptxas/Triton report."""

    kernel: str
    channel: str
    dtype: str
    split: bool
    function: str
    config: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    compile_s: float


def variants(kernels: Iterable[str] = KERNELS, channels: Iterable[str] = tuple(CHANNELS),
             dtypes: Iterable[str] = tuple(DTYPES), splits: Sequence[bool] = (False, True)) -> Iterator[Variant]:
    """The variants to compile (split only matters for the main kernels)."""
    for channel in channels:
        for dtype in dtypes:
            for kernel in kernels:
                for split in (splits if kernel in ("fwd", "bwd_dq", "bwd_dkv") else (True,)):
                    yield Variant(kernel, channel, dtype, split)


def _contiguous_strides(*shape: int) -> List[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return list(reversed(strides))


def _arguments(v: Variant, config: Optional[configs.LaunchConfig] = None):
    """``(jit function, constexprs, argument types, attributes, launch options, config text)`` of a variant
    (with ``config`` instead of the configured launch configuration, to compare candidates)."""
    ch = CHANNELS[v.channel]
    H, K, V, DECAY, shared = ch["H"], ch["K"], ch["V"], ch["DECAY"], ch["shared"]
    elem, precision = DTYPES[v.dtype]
    base = v.kernel.replace("_rev", "")
    cfg = config or configs.prefill_config(base, H, K, V, precision, half_inputs=elem != "fp32")
    # batch strides in token rows, as the launcher passes them (0: q/k shared by the batch)
    qk = [0 if shared else _T] + _contiguous_strides(_T, H, K)[:2]
    vv = [_T] + _contiguous_strides(_T, H, V)[:2]
    gg = [_T] + _contiguous_strides(_T, H)
    strides = dict(sq=qk, sk=qk, sdq=qk, sdk=qk, sv=vv, sdo=vv, so=vv, sdv=vv, sg=gg)
    const = dict(H=H, K=K, V=V, BK=cfg.BK, BV=cfg.BV, DECAY=int(DECAY), IS_VARLEN=False)
    reverse = v.kernel.endswith("_rev")
    if base in ("summary", "scan"):
        fn = segment_summary_kernel if base == "summary" else segment_scan_kernel
        const.update(REVERSE=reverse)
        if base == "summary":
            main = configs.prefill_config("bwd_dkv" if reverse else "fwd", H, K, V, precision,
                                          half_inputs=elem != "fp32")
            const.update(BT=configs.summary_chunk(main, cfg), PRECISION=precision)
            cfg = dataclasses.replace(cfg, BT=const["BT"])
            if reverse:  # x = q, y = do
                strides.update(sx=qk, sy=vv)
            else:  # x = k, y = v
                strides.update(sx=qk, sy=vv)
        else:
            const.pop("DECAY")
            const.update(USE_INIT=True, STORE_FINAL=True)
    else:
        small = cfg.small
        fn = {
            ("fwd", False): decay_attn_fwd_kernel, ("fwd", True): small_heads_fwd_kernel,
            ("bwd_dq", False): decay_attn_bwd_dq_kernel, ("bwd_dq", True): small_heads_bwd_dq_kernel,
            ("bwd_dkv", False): decay_attn_bwd_dkv_kernel, ("bwd_dkv", True): small_heads_bwd_dkv_kernel,
        }[(base, small)]
        const.update(BT=cfg.BT, SPLIT=v.split, USE_H0=True)
        if small:
            const.update(HB=cfg.HB)
        else:
            const.update(PRECISION=precision)
        if base != "fwd":
            const.update(ATOMIC=shared or cfg.NV > 1)
        if base == "bwd_dq":
            const.update(STORE_FINAL=DECAY != DecayMode.NONE and not v.split)
        if base == "bwd_dkv":
            const.update(USE_DHT=True)
    const = {n: val for n, val in const.items() if n in fn.arg_names}
    data = {"q", "k", "v", "do", "o", "dv"} | ({"x", "y"} if base == "summary" else set())
    index = {"cu_seqlens", "seg_first", "seg_seq"}
    ints = {"T", "TT", "L", "NS"}
    signature, attrs, values = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in const:
            signature[name] = "constexpr"
        elif name == "scale":
            signature[name] = "fp32"
        elif name in ints:
            signature[name] = "i32"
        elif name[0] == "s" and name[-2:] in ("_b", "_t", "_h") and name[:-2] in strides:
            value = strides[name[:-2]]["bth".index(name[-1])]
            signature[name] = "i32"
            values[name] = value
            if value % 16 == 0 and name not in fn.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            if name in data:
                signature[name] = "*" + elem
            elif name in index:
                signature[name] = "*i32"
            else:
                signature[name] = "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
    text = f"BT={cfg.BT} " + (f"HB={cfg.HB} " if cfg.small and base not in ("summary", "scan") else "") + \
        f"BK={cfg.BK} BV={cfg.BV} w={cfg.num_warps} s={cfg.num_stages}"
    if base == "scan":
        text = f"BK={cfg.BK} BV={cfg.BV} w={cfg.num_warps}"
    return fn, const, signature, attrs, dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages), text


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def compile_variant(v: Variant, arch: int = 90, config: Optional[configs.LaunchConfig] = None) -> Resources:
    """Compile one variant for ``sm_<arch>`` (with ``config``, default the configured one) and read back its
    resource use."""
    fn, const, signature, attrs, options, text = _arguments(v, config)
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=const, attrs=attrs)
    knobs = triton.knobs
    saved = (knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        knobs.compilation.always_compile = True  # ptxas must run (a cache hit would print no log)
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    seconds = time.perf_counter() - start
    found = {}
    for key, pattern in _PTXAS.items():
        m = pattern.search(log.getvalue())
        found[key] = int(m.group(1)) if m else 0
    if not _PTXAS["registers"].search(log.getvalue()):
        raise RuntimeError(f"no ptxas register report for {v}:\n{log.getvalue()}")
    return Resources(v.kernel, v.channel, v.dtype, v.split, fn.__name__, text, found["registers"],
                     found["spill_stores"], found["spill_loads"], found["stack"], int(compiled.metadata.shared),
                     round(seconds, 2))


def markdown(rows: Sequence[Resources], arch: int) -> str:
    head = (f"compile-time resources, no GPU run: sm_{arch}, triton {triton.__version__}\n\n"
            "| kernel | channel | dtype | split | function | config | registers | spill stores B | spill loads B |"
            " stack B | shared B |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.kernel} | {r.channel} | {r.dtype} | {'yes' if r.split else 'no'} | {r.function} | {r.config} | "
        f"{r.registers} | {r.spill_stores} | {r.spill_loads} | {r.stack} | {r.shared} |\n" for r in rows)
    return head + body


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuxi_linear.kernels.resources",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated subset of {KERNELS}")
    parser.add_argument("--channels", default=",".join(CHANNELS), help=f"comma-separated subset of {tuple(CHANNELS)}")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated subset of {tuple(DTYPES)}")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (default 90: H100)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    chosen = {}
    for opt, allowed in (("kernels", KERNELS), ("channels", tuple(CHANNELS)), ("dtypes", tuple(DTYPES))):
        items = [x for x in getattr(args, opt).split(",") if x]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            parser.error(f"--{opt} must name some of {allowed}, got {getattr(args, opt)!r}")
        chosen[opt] = items
    rows = []
    for v in variants(chosen["kernels"], chosen["channels"], chosen["dtypes"]):
        rows.append(compile_variant(v, args.arch))
        print(f"compiled {v.kernel} {v.channel} {v.dtype} split={v.split}: {rows[-1].registers} registers, "
              f"{rows[-1].spill_stores} B spilled ({rows[-1].compile_s:.1f} s)", file=sys.stderr)
    print(markdown(rows, args.arch))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "triton": triton.__version__, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
