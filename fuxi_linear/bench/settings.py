"""What ``fuxi-linear bench`` measures: the models, stages, dtypes and per-device defaults, the parsing of the
flag values, and :class:`BenchSettings` with its checks (a bad value raises :class:`BenchError`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..models.registry import BASELINE_NAMES, MODEL_NAMES, model_config
from ..training.train_config import PRESETS
from ..utils import check_int, resolve_device
from .timing import timed_rounds

#: Models in the order they are reported (FuXi-Linear first: the speed-ups are relative to it).
BENCH_MODELS: Tuple[str, ...] = MODEL_NAMES
BASELINES: Tuple[str, ...] = BASELINE_NAMES
STAGES: Tuple[str, ...] = ("prefill", "decode")
DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

GPU_SEQ_LENS: Tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
#: CPU default lengths: the short ones where per-call overhead decides, and 2048 (about 2.5 s per quadratic
#: prefill at the CPU default model) where the quadratic models' cost shows.
CPU_SEQ_LENS: Tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
#: Users per step of the decode-throughput sweep (FuXi-Linear alone): the GPU default; none by default on a CPU.
GPU_DECODE_USERS: Tuple[int, ...] = (64, 4096, 32768)
#: History length behind the states of the throughput sweep (a decode step is O(1) in it).
THROUGHPUT_POSITION = 256

#: The paper's model scale, read from its KuaiRand-27K / KuaiRec configuration (the ``kuairand`` preset): the
#: GPU default.
PAPER_MODEL = {k: PRESETS["kuairand"][k] for k in ("embedding_dim", "num_blocks", "num_heads", "qk_dim")}
#: FFN width (F = D * ffn_multiply) of FuXi-Linear's and FuXi-α's multi-stage FFN at every scale: the paper's.
PAPER_FFN_MULTIPLY: int = PRESETS["kuairand"]["ffn_multiply"]
#: CPU default: a smaller model, so the whole grid finishes in a couple of minutes on a few cores.
CPU_MODEL = dict(embedding_dim=64, num_blocks=2, num_heads=4, qk_dim=16)
#: ``decode_burst``: consecutive decode steps per model and round, the first untimed (see
#: :func:`fuxi_linear.bench.timing.time_interleaved`): on a CPU a step right after another model's runs with
#: that model's data and code in the caches, which a serving loop that only decodes never sees.
GPU_DEFAULTS = dict(batch_size=32, warmup=3, repeats=10, decode_repeats=50, decode_burst=1)
#: CPU: more repeats than on a GPU -- a 2-core machine's slow spells last several calls, and with 5 prefill / 15
#: decode calls a single spell moved a quartile and flagged rows on an idle machine (1 to 5 of 48 rows per run);
#: the extra calls cost most at T=2048, where an eager quadratic prefill takes ~0.6 s (4 more per model)
CPU_DEFAULTS = dict(batch_size=4, warmup=2, repeats=9, decode_repeats=45, decode_burst=4)

#: ``--compile`` values, for every model's prefill and decode alike (:mod:`fuxi_linear.bench.compile`): ``on`` =
#: all compiled, ``off`` = all eager, ``auto`` = compiled on a CPU and eager on CUDA (where FuXi-Linear's step
#: is the fused Triton kernel, which ``torch.compile`` does not apply to).
COMPILE_CHOICES: Tuple[str, ...] = ("auto", "on", "off")

#: Catalogue size of the synthetic inputs (item ids only index the embedding table: it does not affect speed).
BENCH_NUM_ITEMS = 10_000


class BenchError(ValueError):
    """A bad benchmark setting (reported by the CLI as ``fuxi-linear bench: error: ...``)."""


def _check_int(flag: str, value: object, minimum: int = 1) -> None:
    try:
        check_int(flag, value, minimum=minimum)
    except (TypeError, ValueError) as err:
        raise BenchError(str(err)) from None


def parse_seq_lens(text: str, flag: str = "--seq-lens") -> Tuple[int, ...]:
    """``"64,128,256"`` -> ``(64, 128, 256)``: positive ints, sorted, duplicates dropped (``flag`` names the
    option in messages)."""
    if not isinstance(text, str) or not text.strip():
        raise BenchError(f"{flag} must be a comma-separated list of positive ints, got {text!r}")
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise BenchError(f"{flag} must be a comma-separated list of positive ints; {part!r} in {text!r} "
                             f"is not an int") from None
        if value < 1:
            raise BenchError(f"{flag} must be positive, got {value} in {text!r}")
        values.append(value)
    return tuple(sorted(set(values)))


def parse_models(text: str) -> Tuple[str, ...]:
    """``"fuxi-linear,hstu"`` -> names in report order; ``"all"`` = every model. Unknown names are an error."""
    if not isinstance(text, str) or not text.strip():
        raise BenchError(f"--models must be a comma-separated list of {', '.join(BENCH_MODELS)}, got {text!r}")
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return BENCH_MODELS
    unknown = [n for n in names if n not in BENCH_MODELS]
    if unknown:
        raise BenchError(f"unknown model name(s) {', '.join(map(repr, unknown))} in --models; valid names: "
                         f"{', '.join(BENCH_MODELS)} (or all)")
    return tuple(n for n in BENCH_MODELS if n in names)


def half_precision_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` weights are a meaningful thing to time on ``device``: always on CUDA; on a CPU only
    where oneDNN has native kernels for it (e.g. bf16 on CPUs with AVX512-BF16 / AMX)."""
    if dtype == torch.float32 or device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False
    return False


def resolve_bench_device(name: str) -> torch.device:
    """:func:`fuxi_linear.utils.resolve_device`, its errors as :class:`BenchError`."""
    try:
        return resolve_device(name)
    except ValueError as err:
        raise BenchError(str(err)) from None


@dataclass
class BenchSettings:
    """What to measure. ``None`` fields take the device's defaults (see :data:`GPU_DEFAULTS`,
    :data:`CPU_DEFAULTS`, :data:`PAPER_MODEL`, :data:`CPU_MODEL`); :meth:`resolve` fills them in."""

    device: str = "auto"
    seq_lens: Optional[Sequence[int]] = None
    batch_size: Optional[int] = None
    models: Sequence[str] = BENCH_MODELS
    dtype: str = "fp32"
    embedding_dim: Optional[int] = None
    num_blocks: Optional[int] = None
    num_heads: Optional[int] = None
    qk_dim: Optional[int] = None
    warmup: Optional[int] = None
    repeats: Optional[int] = None
    decode_repeats: Optional[int] = None
    decode_burst: Optional[int] = None  # consecutive decode steps per model and round, the first untimed
    #: a model whose prefill or decode repeats at a length come out noisy is timed again, on its own, up to this
    #: many more times (a slow spell of the machine passes; the rows say how many attempts they took)
    noisy_retries: int = 2
    num_items: int = BENCH_NUM_ITEMS
    seed: int = 0
    backend: str = "auto"  # FuXi-Linear's operator backend
    decode_users: Optional[Sequence[int]] = None  # N of the decode-throughput sweep (None: the device's default)
    peak_gbs: Optional[float] = None  # memory bandwidth for "% of peak" (None: nominal_peak_gbs of the GPU)
    threads: Optional[int] = None  # CPU: torch threads for the run (None = leave torch's setting)
    compile: str = "auto"  # every model's prefill and decode compiled (see COMPILE_CHOICES); resolved: "on"/"off"
    progress: bool = True
    notes: List[str] = field(default_factory=list)

    def resolve(self) -> "BenchSettings":
        """A copy with every default filled in and every value checked (raises :class:`BenchError`)."""
        device = resolve_bench_device(self.device)
        gpu = device.type == "cuda"
        out = BenchSettings(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        out.device = str(device)
        out.notes = list(self.notes)
        if self.dtype not in DTYPES:
            raise BenchError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not half_precision_supported(device, DTYPES[self.dtype]):
            raise BenchError(f"--dtype {self.dtype} is not supported on this {device.type}: half-precision timings "
                             f"need a CUDA device (or a CPU with native {self.dtype} kernels, which this one lacks); "
                             f"use --dtype fp32")
        models = parse_models(",".join(self.models)) if not isinstance(self.models, str) else parse_models(self.models)
        out.models = list(models)
        seq_lens = self.seq_lens if self.seq_lens is not None else (GPU_SEQ_LENS if gpu else CPU_SEQ_LENS)
        out.seq_lens = list(parse_seq_lens(seq_lens if isinstance(seq_lens, str) else ",".join(map(str, seq_lens))))
        users = self.decode_users if self.decode_users is not None else (GPU_DECODE_USERS if gpu else ())
        users = users if isinstance(users, str) else ",".join(map(str, users))
        out.decode_users = list(parse_seq_lens(users, "--decode-users")) if users.strip() else []
        if out.decode_users and "fuxi-linear" not in models:
            out.decode_users = []
        if out.peak_gbs is not None and not (isinstance(out.peak_gbs, (int, float)) and out.peak_gbs > 0):
            raise BenchError(f"--peak-gbs must be a positive number of GB/s, got {out.peak_gbs!r}")
        defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
        for name, value in defaults.items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        scale = PAPER_MODEL if gpu else CPU_MODEL
        explicit = {k: getattr(self, k) for k in scale if getattr(self, k) is not None}
        for name, value in scale.items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        if not gpu and len(explicit) < len(scale):
            out.notes.append(
                "CPU default model: {num_blocks} blocks, D={embedding_dim}, H={num_heads}, dqk={qk_dim} (smaller than "
                "the paper's {p[num_blocks]} blocks, D={p[embedding_dim]}, H={p[num_heads]}, dqk={p[qk_dim]}; pass "
                "--embedding-dim/--num-blocks/--num-heads/--qk-dim to change it)".format(
                    p=PAPER_MODEL, **{k: getattr(out, k) for k in scale}))
        if self.compile not in COMPILE_CHOICES:
            raise BenchError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if gpu and self.compile == "on":
            raise BenchError(f"--compile on applies to CPU runs only: on {device.type} FuXi-Linear's decode step is "
                             f"the fused Triton kernel, which torch.compile does not apply to, so the models could not "
                             f"all be timed in one regime (use --compile off or auto)")
        out.compile = "on" if not gpu and self.compile != "off" else "off"
        if out.threads is not None:
            _check_int("--threads", out.threads)
        if out.threads is not None and gpu:
            out.notes.append(f"--threads {out.threads} ignored on {device.type}")
            out.threads = None
        for name in ("batch_size", "embedding_dim", "num_blocks", "num_heads", "qk_dim", "repeats",
                     "decode_repeats", "decode_burst", "num_items"):
            _check_int(f"--{name.replace('_', '-')}", getattr(out, name))
        _check_int("--warmup", out.warmup, minimum=0)
        _check_int("--noisy-retries", out.noisy_retries, minimum=0)
        for name in out.models:  # each model's own config checks the sizes (e.g. D divisible by its heads)
            try:
                model_config(name, **model_kwargs(name, out))
            except ValueError as err:
                raise BenchError(f"{name}: {err} (--embedding-dim / --num-heads / --qk-dim)") from None
        return out

    @property
    def compiled(self) -> bool:
        """Whether every model runs compiled (resolved settings)."""
        return self.compile == "on"

    @property
    def regime(self) -> str:
        """One line naming how every model runs (resolved settings)."""
        if self.compiled:
            return ("every model compiled (torch.compile, inductor: prefill compiled for each length, its input "
                    "checks eager; decode one graph per model for every length; compiled in untimed calls before "
                    "the timing)")
        return "every model eager (no torch.compile)"

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def steps_per_state(self) -> int:
        """Decode steps a prefilled state/cache must have room for (every warm-up and timed call, also the
        untimed first call of each burst and one compiling step)."""
        return (self.decode_warmup + timed_rounds(self.decode_repeats, self.decode_burst)) * self.decode_burst + 1

    @property
    def decode_warmup(self) -> int:
        """Warm-up rounds of the decode timing: ``warmup``, but at least one (a step is cheap, and the first
        steps after the models' prefills pay for their page faults; ``warmup=0`` is meant to spare the
        quadratic models' long prefills)."""
        return max(self.warmup, 1)

    @property
    def max_seq_len(self) -> int:
        """Models are built for the longest history plus every decode step after it."""
        longest = max(list(self.seq_lens) + ([THROUGHPUT_POSITION] if self.decode_users else []))
        return longest + self.steps_per_state + 1


def model_kwargs(name: str, s: BenchSettings) -> Dict[str, Any]:
    """The config fields of model ``name`` at the resolved settings ``s``. FuXi-Linear and FuXi-α get the
    paper's FFN width (:data:`PAPER_FFN_MULTIPLY`; FuXi-α has the same multi-stage FFN, SPEC §9), so that the
    two differ only in how their channels mix the past."""
    kwargs = dict(num_items=s.num_items, max_seq_len=s.max_seq_len, embedding_dim=s.embedding_dim,
                  num_blocks=s.num_blocks, num_heads=s.num_heads, qk_dim=s.qk_dim, dropout=0.0)
    if name == "fuxi-linear":
        kwargs["backend"] = s.backend
    if name in ("fuxi-linear", "fuxi-alpha"):
        kwargs["ffn_multiply"] = PAPER_FFN_MULTIPLY
    return kwargs
