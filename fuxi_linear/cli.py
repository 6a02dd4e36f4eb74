"""Command line: ``fuxi-linear train | eval | bench | demo`` (also ``python -m fuxi_linear ...``).

Every flag of the package is declared here, one ``_add_*_arguments`` per subcommand; each subcommand turns its
flags into the settings object of the module that does the work (:class:`fuxi_linear.training.train_config.TrainConfig`,
:class:`fuxi_linear.bench.BenchSettings`, :class:`fuxi_linear.end_to_end_demo.DemoSettings`) and calls it. A
``ValueError``/``TypeError`` (a bad flag value) is printed as ``fuxi-linear CMD: error: ...`` with exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from .training.precision_and_compile import PRECISIONS
from .end_to_end_demo import DemoSettings
from .bench.settings import (BENCH_MODELS, COMPILE_CHOICES, CPU_DEFAULTS, CPU_SEQ_LENS, GPU_DECODE_USERS,
                             GPU_DEFAULTS, GPU_SEQ_LENS, BenchSettings, parse_models, parse_seq_lens)
from .data import DATASET_NAMES
from .models.registry import MODEL_NAMES
from .training.train_config import EXCLUDE_HISTORY_MODES, PRESETS, TrainConfig
from .utils import atomic_write_json, check_int


def _int_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--preset", choices=sorted(PRESETS), help="the paper's configuration for a dataset; "
                   "flags given explicitly override it")
    p.add_argument("--dataset", choices=DATASET_NAMES, help=f"default {d.dataset}")
    p.add_argument("--data-path", help="the dataset file or its folder (not needed for synthetic)")
    p.add_argument("--model", choices=MODEL_NAMES, help=f"default {d.model}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-seq-len", type=int, help="history length L")
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--num-blocks", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--qk-dim", type=int)
    p.add_argument("--ffn-multiply", type=int, help="FFN width F = D x this (default: the model's; FuXi-Linear 1, "
                   "as in every released configuration)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--batch-size", type=int, help=f"training examples per step and per process (default "
                   f"{d.batch_size}; with torchrun N processes the global batch is N times this)")
    p.add_argument("--global-batch-size", type=int, help="instead of --batch-size: examples per step over all "
                   "processes (must be divisible by their number)")
    p.add_argument("--eval-batch-size", type=int, help="evaluation batch per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--num-negatives", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--output", help=f"output folder (default {d.output})")
    p.add_argument("--split", choices=("3way", "2way"), help="3way (default): train/validation/test; 2way: the "
                   "paper's train/test")
    p.add_argument("--train-stride", type=int, help="extra training windows every N events of long histories")
    p.add_argument("--mrr-cap", type=int, help="ranks beyond this count as cap+1 for MRR (the paper: 2500)")
    p.add_argument("--exclude-history", choices=EXCLUDE_HISTORY_MODES, help="items removed from the full ranking "
                   "(never the target): all (default) the user's whole history (SPEC §7), window the items of the "
                   "input window only (the last L events: the released code's evaluation), none")
    p.add_argument("--keep-history", action="store_true", help="the same as --exclude-history none")
    p.add_argument("--temporal-base", type=int)
    p.add_argument("--temporal-start", type=int)
    p.add_argument("--temporal-stride", type=int)
    p.add_argument("--temporal-num-periods", type=int)
    p.add_argument("--temporal-periods", type=_int_list, help="explicit comma-separated periods in the data's "
                   "time unit (instead of base/start/stride; synthetic data defaults to calendar periods)")
    p.add_argument("--fixed-temporal-decay", action="store_true", help="freeze gamma = 0.5 (FuXi-Linear)")
    p.add_argument("--no-temporal-skip", action="store_true", help="FuXi-Linear: the temporal channel outputs o, "
                   "without its alpha o + beta v skip connection (the released ML-20M configuration)")
    p.add_argument("--positional-table-multiple", type=int, help="FuXi-Linear: positional table of L + 11 rows "
                   "rounded up to this (default 128, the released chunk size; 1: L + 11, as released for ML-20M)")
    p.add_argument("--no-temporal", action="store_true", help="ablation: switch the temporal channel off")
    p.add_argument("--backend", choices=("auto", "triton", "cpu", "reference"),
                   help="FuXi-Linear's operator backend (auto: Triton on CUDA; reference: the former name of cpu)")
    p.add_argument("--cache-dir", help="cache the preprocessed dataset here")
    p.add_argument("--k-core", type=int, nargs=2, metavar=("MIN_USER", "MIN_ITEM"))
    p.add_argument("--synthetic-users", type=int)
    p.add_argument("--synthetic-items", type=int)
    p.add_argument("--synthetic-mean-events", type=int)
    p.add_argument("--csv-columns", nargs=3, metavar=("USER", "ITEM", "TIME"),
                   help="column names for --dataset csv")
    p.add_argument("--csv-time-unit", choices=("s", "ms"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32 (default) or bf16: autocast of the encoder to "
                   "bfloat16 on CUDA or a CPU that supports it; weights, optimizer and loss stay float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; aot_eager needs no C++ "
                   "compiler)")
    p.add_argument("--warmup-steps", type=int, help="linear learning-rate warm-up over this many steps")
    p.add_argument("--patience", type=int, help="stop after N epochs without a better validation NDCG@10")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="also write DIR/last.pt every N optimizer "
                   "steps, with the position in the epoch (default: at each epoch's end only); --resume continues "
                   "from that step bit for bit; each write's cost is logged")
    p.add_argument("--resume", help="continue from a checkpoint (DIR/last.pt), also one written inside an epoch")


_DIRECT = ("dataset", "data_path", "model", "epochs", "max_seq_len", "embedding_dim", "num_blocks", "num_heads",
           "qk_dim", "dropout", "batch_size", "eval_batch_size", "lr", "num_negatives", "seed", "device", "output",
           "split", "train_stride", "mrr_cap", "temporal_base", "temporal_start", "temporal_stride",
           "temporal_num_periods", "temporal_periods", "backend", "cache_dir", "k_core", "synthetic_users", "synthetic_items",
           "synthetic_mean_events", "global_batch_size", "precision", "compile_backend", "warmup_steps", "patience",
           "ffn_multiply", "positional_table_multiple", "exclude_history", "checkpoint_every")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``fuxi-linear train`` flags: the preset, then every flag given."""
    if args.batch_size is not None and args.global_batch_size is not None:
        raise ValueError("give --batch-size (per process) or --global-batch-size (over all processes), not both")
    if args.compile_backend is not None and not args.compile:
        raise ValueError("--compile-backend needs --compile")
    if args.keep_history and args.exclude_history not in (None, "none"):
        raise ValueError(f"--keep-history means --exclude-history none, not {args.exclude_history}")
    values = dict(PRESETS[args.preset]) if args.preset else {}
    if args.batch_size is not None:  # a per-process batch given on the command line replaces the preset's global one
        values.pop("global_batch_size", None)
    values.update({k: getattr(args, k) for k in _DIRECT if getattr(args, k) is not None})
    if values.get("model") == "hstu" and args.ffn_multiply is None:
        values.pop("ffn_multiply", None)  # a preset's FFN width: HSTU has no FFN
    if args.keep_history:
        values["exclude_history"] = "none"
    if args.no_temporal_skip:
        values["temporal_skip"] = False
    if args.fixed_temporal_decay:
        values["learn_temporal_decay"] = False
    if args.no_temporal:
        values["use_temporal"] = False
    if args.no_progress:
        values["progress"] = False
    if args.compile:
        values["compile"] = True
    if args.csv_columns:
        user, item, time_col = args.csv_columns
        values["extra"] = dict(user_col=user, item_col=item, time_col=time_col)
        if args.csv_time_unit:
            values["extra"]["time_unit"] = args.csv_time_unit
    return TrainConfig(**values)


def run_train_command(args: argparse.Namespace) -> Dict[str, Any]:
    from .training import train

    return train(config_from_args(args), resume=args.resume)


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-path", help="where the dataset is now, if it moved")
    p.add_argument("--device")
    p.add_argument("--mrr-cap", type=int)
    p.add_argument("--exclude-history", choices=EXCLUDE_HISTORY_MODES, help="items removed from the ranking "
                   "(default: the run's setting; all = SPEC §7, window = the released evaluation)")
    p.add_argument("--json", help="also write the metrics here")
    p.add_argument("--no-progress", action="store_true")


def run_eval_command(args: argparse.Namespace) -> Dict[str, Any]:
    from .training import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, {"data_path": args.data_path, "device": args.device,
                                                   "mrr_cap": args.mrr_cap, "exclude_history": args.exclude_history,
                                                   "progress": False if args.no_progress else None})
    if args.json:
        atomic_write_json(args.json, result, indent=2)
    return result


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--seq-lens", help="comma list of history lengths (default "
                   f"{','.join(map(str, GPU_SEQ_LENS))} on GPU, {','.join(map(str, CPU_SEQ_LENS))} on CPU)")
    p.add_argument("--batch-size", type=int, help=f"users per batch (default {GPU_DEFAULTS['batch_size']} on GPU, "
                   f"{CPU_DEFAULTS['batch_size']} on CPU)")
    p.add_argument("--models", default="all", help=f"comma list of {', '.join(BENCH_MODELS)} (default all)")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16 (weights cast; GPU, or a CPU "
                   "with native kernels for it)")
    p.add_argument("--embedding-dim", type=int, help="D (default 128 on GPU = the paper; 64 on CPU)")
    p.add_argument("--num-blocks", type=int, help="default 4 on GPU (the paper), 2 on CPU")
    p.add_argument("--num-heads", type=int, help="default 4")
    p.add_argument("--qk-dim", type=int, help="per-head q/k width (default 32 on GPU = the paper, 16 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default "
                   f"{GPU_DEFAULTS['warmup']} GPU / {CPU_DEFAULTS['warmup']} CPU)")
    p.add_argument("--repeats", type=int, help="timed prefill calls; the median is reported (default "
                   f"{GPU_DEFAULTS['repeats']} GPU / {CPU_DEFAULTS['repeats']} CPU)")
    p.add_argument("--decode-repeats", type=int, help="timed decode steps (default "
                   f"{GPU_DEFAULTS['decode_repeats']} GPU / {CPU_DEFAULTS['decode_repeats']} CPU)")
    p.add_argument("--noisy-retries", type=int, default=2, help="a model whose prefill or decode repeats at a "
                   "length come out noisy is timed again, on its own, up to this many more times (default 2; the "
                   "report names the rows that took more than one attempt)")
    p.add_argument("--decode-burst", type=int, help="consecutive decode steps per model and round, the first "
                   "untimed: steady steps of a loop that only decodes; 1 times each step cold, right after another "
                   f"model's (default {GPU_DEFAULTS['decode_burst']} GPU / {CPU_DEFAULTS['decode_burst']} CPU)")
    p.add_argument("--decode-users", help="comma list of users per step for FuXi-Linear's decode-throughput sweep "
                   f"(default {','.join(map(str, GPU_DECODE_USERS))} on GPU, none on CPU)")
    p.add_argument("--peak-gbs", type=float, help="memory bandwidth (GB/s) for the decode '%% of peak' (default: "
                   "the GPU's nominal datasheet figure, when known)")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "cpu", "reference"),
                   help="FuXi-Linear's operator backend (auto: Triton on CUDA; reference: the former name of cpu)")
    p.add_argument("--threads", type=int, help="CPU only: torch threads for the run (default: torch's; 1 is "
                   "the steadiest on a shared, oversubscribed machine)")
    p.add_argument("--compile", default="auto", choices=COMPILE_CHOICES,
                   help="every model's prefill and decode through torch.compile (on), or every model eager (off); "
                   "auto (default): on for a CPU, off on CUDA (where FuXi-Linear's step is the fused Triton kernel). "
                   "Compiling happens in untimed calls before the timing: tens of seconds per model and length on a "
                   "small CPU the first time (inductor keeps the graphs on disk for later runs); a model whose "
                   "compile fails is reported as failed, not timed eagerly")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--plot", help="write a Figure-2-style PNG here (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true")


def bench_settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The :class:`BenchSettings` of ``fuxi-linear bench`` flags (checked by ``BenchSettings.resolve``)."""
    return BenchSettings(
        device=args.device, seq_lens=parse_seq_lens(args.seq_lens) if args.seq_lens is not None else None,
        batch_size=args.batch_size, models=parse_models(args.models), dtype=args.dtype,
        embedding_dim=args.embedding_dim, num_blocks=args.num_blocks, num_heads=args.num_heads, qk_dim=args.qk_dim,
        warmup=args.warmup, repeats=args.repeats, decode_repeats=args.decode_repeats, seed=args.seed,
        decode_burst=args.decode_burst, noisy_retries=args.noisy_retries,
        backend=args.backend, threads=args.threads, progress=not args.no_progress,
        decode_users=parse_seq_lens(args.decode_users, "--decode-users") if args.decode_users is not None else None,
        peak_gbs=args.peak_gbs, compile=args.compile,
    )


def run_bench_command(args: argparse.Namespace):
    """``fuxi-linear bench``: measure, print the report, write ``--json`` and ``--plot``."""
    from .bench.run import run_bench

    return run_bench(bench_settings_from_args(args), json_path=args.json, plot_path=args.plot)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument("--output", default=d.output, help=f"output folder (default {d.output})")
    p.add_argument("--device", default=d.device, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, help="CPU torch threads for the demo (default: torch's; 1 is faster on "
                   "a shared, oversubscribed machine)")
    p.add_argument("--compile", default=d.compile, choices=COMPILE_CHOICES,
                   help=f"the benchmark's regime, as for bench (default {d.compile}: every model eager; the "
                   "compiled regime compiles 4 models at 7 lengths first, about ten minutes on 2 cores the first "
                   "time, far over the demo's two; fuxi-linear bench times both regimes)")
    p.add_argument("--no-bench", action="store_true", help="skip the speed benchmark")
    p.add_argument("--no-progress", action="store_true")


def run_demo_command(args: argparse.Namespace) -> Dict[str, Any]:
    """``fuxi-linear demo``: train, evaluate and benchmark (:func:`fuxi_linear.end_to_end_demo.run_demo`)."""
    from .end_to_end_demo import run_demo

    if args.threads is not None:
        check_int("--threads", args.threads)
    return run_demo(DemoSettings(output=args.output, device=args.device, epochs=args.epochs, seed=args.seed,
                                 threads=args.threads, compile=args.compile, bench=not args.no_bench,
                                 progress=not args.no_progress))


#: subcommand -> (help, add its flags, run it)
COMMANDS = {
    "train": ("train a model and write DIR/metrics.json and DIR/checkpoint.pt", _add_train_arguments,
              run_train_command),
    "eval": ("re-score a checkpoint on its validation and test splits", _add_eval_arguments, run_eval_command),
    "bench": ("time prefill and decode of FuXi-Linear vs HSTU, FuXi-alpha and SASRec (the paper's Figure 2)",
              add_bench_arguments, run_bench_command),
    "demo": ("train briefly on synthetic data, evaluate against the most-popular baseline, then benchmark",
             add_demo_arguments, run_demo_command),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``fuxi-linear`` parser with its four subcommands."""
    parser = argparse.ArgumentParser(prog="fuxi-linear", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command][2](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"fuxi-linear {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
