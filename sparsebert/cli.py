"""The `sparsebert` command: parse arguments, call one library function, print or write its result.

Subcommands: encode (texts → embeddings .npy), and, as they land, run, prune, inspect, benchmark.
Errors a user can cause (bad paths, bad files, bad inputs) end with a one-line message on stderr and
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsebert",
        description="CPU inference for sparse (pruned) BERT encoders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="embed texts (one per line) into an .npy array",
                       description="Mean-pooled sentence embeddings, as sentence-transformers' encode.")
    p.add_argument("path", help="model: Hugging Face folder, .onnx file or deployment folder")
    p.add_argument("--input", required=True, help="text file, one text per line ('-' for stdin)")
    p.add_argument("--output", required=True, help="where to write the (N, H) float32 .npy array")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pooling", choices=("mean", "cls", "max"), default="mean")
    p.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation")
    p.add_argument("--layers", type=_layers, default=None,
                   help="keep only these encoder layers, e.g. 0,2,4,6,8,11")
    p.set_defaults(func=cmd_encode)
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
