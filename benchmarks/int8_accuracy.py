"""Int8 against FP32 of the same weights on real sentences: what `sparsebert quantize` costs.

For each model folder (all-MiniLM-L6-v2, or a student `sparsebert sparsify` wrote), quantizes it
twice into a temporary folder, without calibration and with SmoothQuant factors measured on the
first 256 training sentences (`sparsebert quantize --calibration`), and embeds the first 1,000
held-out sentences (normalised mean-pooled) with the FP32 model, each int8 model and the teacher:

  cos_to_fp32_mean / _min   int8 vs FP32 of the same weights, per sentence
  cos_to_teacher_mean       int8 (and FP32) vs the dense teacher
  kinds                     the int8 kernel kinds the linears ran (`int8-amx` on AMX CPUs, ...)
  ort_int8_dynamic          ONNX Runtime's `quantize_dynamic` (per-channel QInt8, the
                            `sparsebert benchmark --engine onnxruntime-int8` file) vs the same FP32,
                            when onnxruntime and the `[train]` extra (for the export) are installed

    .venv/bin/python benchmarks/int8_accuracy.py MODEL [MODEL ...] --teacher MINILM \\
        --json notebooks/results/int8_accuracy_2026-12-03.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lines(path: Path, n: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(line.strip())
                if len(out) == n:
                    break
    return out


def measure(model: str, teacher_emb, texts, calibration) -> dict:
    import sparsebert
    from sparsebert.quant import quantize

    fp = sparsebert.load(model).encode(texts)
    row = {"fp32_cos_to_teacher_mean": float((fp * teacher_emb).sum(1).mean())}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in (("int8", {}), ("int8_smoothquant", {"calibration_texts": calibration})):
            quantize(model, f"{tmp}/{name}", onnx=False, **kwargs)
            m = sparsebert.load(f"{tmp}/{name}")
            q = m.encode(texts)
            cos = (q * fp).sum(1)
            row[name] = {"kinds": sorted({r["format"] for r in m.sparsity_report()["linears"]}),
                         "cos_to_fp32_mean": float(cos.mean()), "cos_to_fp32_min": float(cos.min()),
                         "cos_to_teacher_mean": float((q * teacher_emb).sum(1).mean())}
    try:
        row["ort_int8_dynamic"] = ort_int8(model, fp, teacher_emb, texts)
    except ImportError as exc:
        row["ort_int8_dynamic"] = f"skipped: {exc}"
    return row


def ort_int8(model: str, fp, teacher_emb, texts, batch: int = 64) -> dict:
    """ONNX Runtime's dynamic int8 of the model's ONNX export, mean-pooled and normalised."""
    import numpy as np
    import onnxruntime as ort

    import sparsebert
    from sparsebert.batching import pool
    from sparsebert.ort_files import ort_model_file

    path, _ = ort_model_file(model, int8=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tokenizer = sparsebert.load(model).tokenizer
    out = []
    for i in range(0, len(texts), batch):
        b = tokenizer(texts[i:i + batch])
        feed = {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "token_type_ids": b.token_type_ids}
        hidden = session.run(None, {n: feed[n].astype(np.int64) for n in names})[0]
        out.append(pool(hidden, b.attention_mask))
    q = np.concatenate(out)
    cos = (q * fp).sum(1)
    return {"cos_to_fp32_mean": float(cos.mean()), "cos_to_fp32_min": float(cos.min()),
            "cos_to_teacher_mean": float((q * teacher_emb).sum(1).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--teacher", required=True, help="the dense model's folder (all-MiniLM-L6-v2)")
    ap.add_argument("--data", default=str(ROOT / "data-cache" / "sentences"),
                    help="folder with heldout.txt and train.txt (`sparsebert fetch-data`)")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--json")
    args = ap.parse_args()

    import sparsebert
    from sparsebert.tuning import machine

    data = Path(args.data)
    texts = lines(data / "heldout.txt", args.sentences)
    calibration = lines(data / "train.txt", 256)
    teacher_emb = sparsebert.load(args.teacher).encode(texts)
    result = {"cpu": machine()["cpu"], "sentences": len(texts), "calibration_sentences": len(calibration),
              "models": {}}
    for model in args.models:
        result["models"][model] = measure(model, teacher_emb, texts, calibration)
        print(model, json.dumps(result["models"][model]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
