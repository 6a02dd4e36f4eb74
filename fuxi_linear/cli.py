"""Command line: ``fuxi-linear train | eval | bench | demo`` (also ``python -m fuxi_linear ...``)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .data import DATASET_NAMES
from .acceleration import PRECISIONS
from .training import MODEL_NAMES, PRESETS, TrainConfig, evaluate_checkpoint, train


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
    p.add_argument("--keep-history", action="store_true", help="do not exclude already-seen items when ranking")
    p.add_argument("--temporal-base", type=int)
    p.add_argument("--temporal-start", type=int)
    p.add_argument("--temporal-stride", type=int)
    p.add_argument("--temporal-num-periods", type=int)
    p.add_argument("--temporal-periods", type=_int_list, help="explicit comma-separated periods in the data's "
                   "time unit (instead of base/start/stride; synthetic data defaults to calendar periods)")
    p.add_argument("--fixed-temporal-decay", action="store_true", help="freeze gamma = 0.5 (FuXi-Linear)")
    p.add_argument("--no-temporal", action="store_true", help="ablation: switch the temporal channel off")
    p.add_argument("--backend", choices=("auto", "triton", "reference"))
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


_DIRECT = ("dataset", "data_path", "model", "epochs", "max_seq_len", "embedding_dim", "num_blocks", "num_heads",
           "qk_dim", "dropout", "batch_size", "eval_batch_size", "lr", "num_negatives", "seed", "device", "output",
           "split", "train_stride", "mrr_cap", "temporal_base", "temporal_start", "temporal_stride",
           "temporal_num_periods", "temporal_periods", "backend", "cache_dir", "k_core", "synthetic_users", "synthetic_items",
           "synthetic_mean_events", "global_batch_size", "precision", "compile_backend", "warmup_steps", "patience")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.batch_size is not None and args.global_batch_size is not None:
        raise ValueError("give --batch-size (per process) or --global-batch-size (over all processes), not both")
    if args.compile_backend is not None and not args.compile:
        raise ValueError("--compile-backend needs --compile")
    values = dict(PRESETS[args.preset]) if args.preset else {}
    values.update({k: getattr(args, k) for k in _DIRECT if getattr(args, k) is not None})
    if args.keep_history:
        values["exclude_history"] = False
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fuxi-linear", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a model and write DIR/metrics.json and DIR/checkpoint.pt")
    _add_train_arguments(p_train)
    p_train.add_argument("--resume", help="continue from a checkpoint (DIR/last.pt)")
    p_eval = sub.add_parser("eval", help="re-score a checkpoint on its validation and test splits")
    p_eval.add_argument("--checkpoint", required=True)
    p_eval.add_argument("--data-path", help="where the dataset is now, if it moved")
    p_eval.add_argument("--device")
    p_eval.add_argument("--mrr-cap", type=int)
    p_eval.add_argument("--json", help="also write the metrics here")
    p_eval.add_argument("--no-progress", action="store_true")
    from .benchmarking import add_bench_arguments, run_bench_command
    from .demo import add_demo_arguments, run_demo_command

    add_bench_arguments(sub.add_parser("bench", help="time prefill and decode of FuXi-Linear vs HSTU, FuXi-alpha "
                                       "and SASRec (the paper's Figure 2)"))
    add_demo_arguments(sub.add_parser("demo", help="train briefly on synthetic data, evaluate against the "
                                      "most-popular baseline, then benchmark"))
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            train(config_from_args(args), resume=args.resume)
        elif args.command == "eval":
            result = evaluate_checkpoint(args.checkpoint, {"data_path": args.data_path, "device": args.device,
                                                           "mrr_cap": args.mrr_cap,
                                                           "progress": False if args.no_progress else None})
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(result, f, indent=2)
        elif args.command == "bench":
            run_bench_command(args)
        elif args.command == "demo":
            run_demo_command(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"fuxi-linear {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
