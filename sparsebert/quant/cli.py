"""The `sparsebert quantize SRC DST` subcommand (registered through cli._COMMAND_MODULES)."""

from __future__ import annotations


def cmd_quantize(args) -> dict:
    from .checkpoint import quantize

    texts = None
    if args.calibration is not None:
        with open(args.calibration, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()][: args.calibration_lines]
    return quantize(args.src, args.dst, calibration_texts=texts, alpha=args.alpha,
                    overwrite=args.overwrite, onnx=not args.no_onnx)


def add_commands(sub) -> None:
    p = sub.add_parser(
        "quantize", help="int8 post-training quantization into a folder sparsebert loads (+ QDQ ONNX)",
        description="Symmetric per-output-channel int8 weights (zeros stay zeros, so pruning "
                    "survives), activations quantized per token at run time; optional SmoothQuant "
                    "calibration from texts. Writes model.safetensors + config.json (+ "
                    "model_qdq.onnx for ONNX Runtime, which needs the [dev] extra's torch).")
    p.add_argument("src", help="source model: Hugging Face folder (dense or pruned) or .onnx file")
    p.add_argument("dst", help="new folder for the quantized model")
    p.add_argument("--calibration", default=None, metavar="TEXTS",
                   help="text file, one text per line: measure SmoothQuant factors on it")
    p.add_argument("--calibration-lines", type=int, default=512, help="texts to read from --calibration")
    p.add_argument("--alpha", type=float, default=0.6, help="SmoothQuant migration strength in [0, 1]")
    p.add_argument("--no-onnx", action="store_true", help="skip the QDQ ONNX export")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")
    p.set_defaults(func=cmd_quantize)
