"""The `sparsebert` command: parse arguments, call one library function, print or write its result.

Subcommands: encode (texts → embeddings .npy, or a table → Parquet, locally or on Ray), run, prune,
inspect, benchmark here; features with their own module (training, serving, ...) register theirs
through `_COMMAND_MODULES`.
Errors a user can cause (bad paths, bad files, bad inputs) end with a one-line message on stderr and
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .errors import SparseBertError


def _read_lines(path: str) -> list[str]:
    """Input texts, one per line; '-' reads standard input. Empty lines are kept as empty texts."""
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SparseBertError(f"cannot read input file {path!r}: {exc}") from None
    return text.splitlines()


def cmd_encode(args) -> dict:
    table_io = (args.ray or not args.output.lower().endswith(".npy")
                or Path(args.input).suffix.lower() in (".jsonl", ".ndjson", ".parquet", ".pq"))
    if not table_io:
        return _encode_npy(args)
    if args.output.lower().endswith(".npy"):
        raise SparseBertError(f"--output {args.output!r}: JSONL/Parquet input and --ray write Parquet; "
                              "give a .parquet file or a folder for the shards")
    if not args.ray and (args.address or args.actors):
        raise SparseBertError("--address and --actors need --ray")
    from .encode_job import encode_table

    return encode_table(args.path, args.input, args.output, ray=args.ray, address=args.address,
                        actors=args.actors, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size,
                        normalize=not args.no_normalize, pooling=args.pooling, layers=args.layers,
                        text_column=args.text_column, id_column=args.id_column,
                        overwrite=args.overwrite, show_progress=True)


def _encode_npy(args) -> dict:
    import numpy as np

    from .api import load

    model = load(args.path, layers=args.layers)
    texts = _read_lines(args.input)
    emb = model.encode(texts, batch_size=args.batch_size, normalize=not args.no_normalize,
                       pooling=args.pooling)
    np.save(args.output, emb)
    return {"output": args.output, "count": int(emb.shape[0]), "dim": int(emb.shape[1])}


def _layers(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers takes comma-separated layer indices such as 0,2,4, got {value!r}"
        ) from None


# --- prune / inspect / benchmark: model tools ---------------------------------------------------


def cmd_prune(args) -> dict:
    from .prune import prune_checkpoint

    return prune_checkpoint(args.src, args.dst, sparsity=args.sparsity, block=args.block,
                            scope=args.scope, layers=args.layers, overwrite=args.overwrite)


def cmd_inspect(args) -> dict | None:
    from .inspection import format_table, inspect_model

    info = inspect_model(args.path, layers=args.layers, formats=args.formats)
    if args.json:
        return info
    print(format_table(info))
    return None


def cmd_benchmark(args) -> dict:
    from .benchmark import benchmark_model

    result = benchmark_model(args.path, engine=args.engine, batch_size=args.batch_size,
                             seq_len=args.seq_len, time_s=args.time, warmup_s=args.warmup,
                             threads=args.threads, layers=args.layers, formats=args.formats)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def _add_tool_commands(sub) -> None:
    formats = ("auto", "dense", "csr", "bsr", "bsr4x1", "bsr8x1", "bsr2x2", "bsr1x4")

    p = sub.add_parser("prune", help="magnitude-prune a checkpoint into a new Hugging Face folder",
                       description="One-shot magnitude pruning of the encoder linears (exact zeros).")
    p.add_argument("src", help="source model: Hugging Face folder or .onnx file")
    p.add_argument("dst", help="new folder for the pruned model")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of weights to zero, in [0, 1)")
    p.add_argument("--block", default=None, help="prune aligned RxC blocks of W (out x in), e.g. 4x1")
    p.add_argument("--scope", choices=("per-layer", "global"), default="per-layer")
    p.add_argument("--layers", type=_layers, default=None,
                   help="keep only these encoder layers, in this order, e.g. 0,2,4,6,8,11")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("inspect", help="per-layer sparsity, block structure and chosen formats",
                       description="Load a model and report each encoder linear as it will run.")
    p.add_argument("path", help="model: Hugging Face folder, .onnx file or deployment folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--layers", type=_layers, default=None)
    p.add_argument("--formats", choices=formats, default="auto")
    p.set_defaults(func=cmd_inspect)

    from .benchmark import ENGINES

    p = sub.add_parser("benchmark", help="throughput and latency on random inputs",
                       description="Time a model on sparsebert or ONNX Runtime with random token ids.")
    p.add_argument("path", help="model: Hugging Face folder, .onnx file or folder with model.onnx")
    p.add_argument("--engine", choices=ENGINES, default="sparsebert",
                   help="sparsebert: this runtime; onnxruntime: ONNX Runtime in float32 on the "
                        "ONNX file, or on an export of a Hugging Face folder made once and cached "
                        "(needs sparsebert[train]); onnxruntime-int8: ONNX Runtime's dynamic int8 "
                        "(quantize_dynamic, per-channel int8 weights) of that float file, cached")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--time", type=float, default=10.0, help="seconds of timed batches")
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default min(2, time/5))")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--layers", type=_layers, default=None)
    p.add_argument("--formats", choices=formats, default="auto")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the result to this file")
    p.set_defaults(func=cmd_benchmark)


# --- run: task pipelines over a file (pipelines owner) -------------------------------------


def cmd_run(args) -> dict | None:
    from .pipelines import TASKS, pipeline
    from .pipelines.files import run_file

    options = {"batch_size": args.batch_size}
    for flag, key in (("--top-k", "top_k"), ("--aggregation-strategy", "aggregation_strategy")):
        value = getattr(args, key)
        if value is None:
            continue
        if key not in TASKS[args.task].defaults:
            raise SparseBertError(f"{flag} does not apply to the {args.task} task")
        options[key] = value
    if args.layers is not None:
        options["layers"] = args.layers
    return run_file(pipeline(args.task, args.path, **options), args.input, args.output)


def _add_run_command(sub) -> None:
    from .pipelines import TASKS
    from .pipelines.files import INPUT_FORMATS

    epilog = "input formats:\n" + "\n".join(f"  {task}: {fmt}" for task, fmt in INPUT_FORMATS.items())
    p = sub.add_parser(
        "run", help="run a task pipeline (classification, NER, QA, fill-mask, embeddings) on a file",
        description="Texts in, answers out: one input per line, one JSON line per result, shaped\n"
                    "like Hugging Face transformers' pipelines (ner = token-classification,\n"
                    "sentiment-analysis = text-classification).",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS), metavar="TASK", help=f"one of {sorted(TASKS)}")
    p.add_argument("path", help="model: Hugging Face folder, .onnx file or deployment folder")
    p.add_argument("--input", required=True, help="input file, one input per line ('-' for stdin)")
    p.add_argument("--output", default=None, help="JSON lines file to write (default: stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top-k", type=int, default=None,
                   help="answers per input (text-classification, question-answering, fill-mask)")
    p.add_argument("--aggregation-strategy", default=None,
                   choices=("none", "simple", "first", "max", "average"),
                   help="token-classification grouping of tokens into entities (default none)")
    p.add_argument("--layers", type=_layers, default=None,
                   help="keep only these encoder layers, e.g. 0,2,4,6,8,11")
    p.set_defaults(func=cmd_run)


# --- end run ---------------------------------------------------------------------------------


# --- tune: fill the tuning cache (sparsebert.tuning) by loading a model -------------------------


def tune(path, *, layers=None, retune: bool = False) -> dict:
    """Load the model at `path` with measured formats (filling the tuning cache) and run one
    small forward pass (filling Numba's kernel cache); report what was measured or reused.
    The library function behind `sparsebert tune PATH`."""
    import time

    import numpy as np

    from .api import load
    from .ffn import FusedFFN, warmup
    from .tuning import default_cache

    cache = default_cache()
    if retune:
        cache.entries.clear()
    t0 = time.perf_counter()
    model = load(path, layers=layers, formats="auto")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = np.full((1, 8), 1000 % model.config.vocab_size, dtype=np.int64)
    model(ids)
    if any(layer.fused_ffn is not None for layer in model.encoder.layers):
        warmup()  # the small call above takes the two-call FFN path
    warm_s = time.perf_counter() - t0
    for layer in model.encoder.layers:  # the fused FFNs' token tiles, now rather than on a first long batch
        if isinstance(layer.fused_ffn, FusedFFN):  # (counted in choosing_s below)
            layer.fused_ffn.settle_tile()
    choices = {}
    rows = model.sparsity_report()["linears"]
    choosing_s = sum((r.get("choice") or {}).get("seconds", 0.0) for r in rows)
    for row in rows:
        c = row.get("choice") or {}
        if c.get("signature"):
            choices.setdefault(c["signature"], {"format": row["format"], "chunk_cols": c.get(
                "chunk_cols"), "by": c["by"], "timings_ms": c.get("timings_ms")})
    for c in filter(None, model.sparsity_report()["total"]["fused_ffn_tile_choice"]):
        choosing_s += c.get("seconds", 0.0)  # the fused FFNs' token tiles (tuning.choose_ffn_tile)
        choices.setdefault(c["signature"], {"format": c["format"], "tile": c["tile"], "by": c["by"],
                                            "timings_ms": c.get("timings_ms")})
    return {"path": str(path), "cache": str(cache.path), "machine": cache.machine,
            "machine_key": cache.key, "load_s": round(load_s, 3), "choosing_s": round(choosing_s, 3),
            "first_call_s": round(warm_s, 3),
            "measured": sum(c["by"] == "measured" for c in choices.values()),
            "from_cache": sum(c["by"] == "cache" for c in choices.values()), "choices": choices}


def _add_tune_command(sub) -> None:
    from .tuning import cache_path

    p = sub.add_parser("tune", help="time weight formats on this machine and cache the choice",
                       description="Load a model with formats chosen by timing them on this CPU, "
                                   "store the choices in the tuning cache (" + str(cache_path())
                                   + ") and compile its kernels into Numba's cache, so later "
                                   "loads and first calls are fast.")
    p.add_argument("path", help="model: Hugging Face folder, .onnx file or deployment folder")
    p.add_argument("--retune", action="store_true", help="measure again even if cached")
    p.add_argument("--json", default=None, help="also write the result here")
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args) -> dict:
    result = tune(args.path, retune=args.retune)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


# Subcommands that live with their own feature: each module has `add_commands(subparsers)` and
# imports its optional dependencies (torch, starlette, ray) only inside the command it runs, so
# `sparsebert --help` and the runtime work without the extras.
_COMMAND_MODULES = (".serve.cli", ".train.cli", ".quant.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsebert",
        description="CPU inference for sparse (pruned) BERT encoders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "encode", help="embed texts into an .npy array, or a table into Parquet (locally or on Ray)",
        description="Mean-pooled sentence embeddings, as sentence-transformers' encode.\n"
                    "Text file + .npy output: an (N, H) array, rows in line order. Otherwise the output\n"
                    "is Parquet (a .parquet file, or a folder of shards) with columns id, embedding,\n"
                    "error: id is the line/row number, or the input's id column; rows with an empty or\n"
                    "non-string text get a null embedding and their reason in error. The job fails\n"
                    "unless every input id is written exactly once. --ray runs on Ray Data.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="model: Hugging Face folder, .onnx file or deployment folder")
    p.add_argument("--input", required=True,
                   help="text file (one text per line, '-' for stdin with .npy output), .jsonl "
                        "(one object per line) or .parquet file or folder")
    p.add_argument("--output", required=True,
                   help="out.npy (text input, local), out.parquet, or a folder for Parquet shards")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pooling", choices=("mean", "cls", "max"), default="mean")
    p.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation")
    p.add_argument("--layers", type=_layers, default=None,
                   help="keep only these encoder layers, e.g. 0,2,4,6,8,11")
    p.add_argument("--text-column", default="text", help="JSONL key / Parquet column of the texts")
    p.add_argument("--id-column", default="id",
                   help="JSONL key / Parquet column of the ids (default id; row numbers if absent)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing Parquet output")
    p.add_argument("--ray", action="store_true", help="run on Ray Data (needs sparsebert[ray])")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. ray://head:10001 or auto (default: a local one)")
    p.add_argument("--actors", type=int, default=None,
                   help="Ray actors, each holding one model (default: cluster CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=int, default=1, help="CPUs (Numba threads) per actor")
    p.set_defaults(func=cmd_encode)
    _add_tool_commands(sub)
    _add_run_command(sub)
    _add_tune_command(sub)
    for module in _COMMAND_MODULES:
        importlib.import_module(module, __package__).add_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (SparseBertError, ValueError, OSError) as exc:
        print(f"sparsebert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
