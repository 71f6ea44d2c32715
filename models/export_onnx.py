"""Export a Hugging Face BertModel folder to ONNX flavours: `python models/export_onnx.py DIR OUT`.

The export itself lives in `sparsebert.export` (benchmarks and the demo use it too); this script is
its command line, and re-exports its names for the tests that import them from models/.
"""

import argparse
import json
import os

from sparsebert.export import FLAVOURS, export_bert_onnx, load_bert  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="Hugging Face BertModel folder (config.json + model.safetensors)")
    parser.add_argument("out_dir", help="folder to write <flavour>/model.onnx into")
    parser.add_argument("--flavour", choices=FLAVOURS, action="append",
                        help="flavour to export (repeatable; default: all)")
    args = parser.parse_args(argv)
    written = {}
    for flavour in args.flavour or FLAVOURS:
        path = os.path.join(args.out_dir, flavour, "model.onnx")
        written[flavour] = export_bert_onnx(args.model_dir, path, flavour)
    print(json.dumps(written, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
