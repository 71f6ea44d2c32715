"""Export a Hugging Face BertModel folder to ONNX in the flavours real-world exports come in.

Needs torch and transformers (the `[train]` extra; the dynamo flavour also onnxscript, from `[dev]`):
it makes the ONNX Runtime baseline of benchmarks, the file `sparsebert benchmark --engine onnxruntime`
runs for a Hugging Face folder (`sparsebert.ort_files`) and the reference exports of tests. Not needed
to run sparsebert.

Flavours (all output `last_hidden_state` and `pooler_output`, with dynamic batch and sequence axes):
  legacy14        torch.onnx.export(dynamo=False), opset 14: LayerNorm decomposed into
                  ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add, GELU as Div/Erf/Add/Mul/Mul.
  legacy17        dynamo=False, opset 17: one LayerNormalization node per LayerNorm.
  dynamo          dynamo=True, opset 18: Gelu nodes, weights in an external `<name>.onnx.data` file.
  no_token_type   legacy17 without the `token_type_ids` input (the model uses its all-zero default).

`export_task_onnx` exports a BertFor... task model folder (masked LM, sequence / token
classification, question answering) the same way, outputting `logits` (or `start_logits` and
`end_logits`), into a folder with the config and tokenizer beside it, ready for
`sparsebert.pipeline`.

transformers 5 fails when BertModel.forward gets positional arguments, so the export goes through a
small wrapper module that calls it with keywords. What is deliberately left out: fp16/int8 exports,
optimum/onnxruntime-transformers fused graphs (Attention, SkipLayerNormalization nodes).
"""

from __future__ import annotations

import os

from .errors import require
import warnings

FLAVOURS = ("legacy14", "legacy17", "dynamo", "no_token_type")
TASK_FLAVOURS = ("legacy14", "legacy17", "dynamo")
TASK_CLASSES = ("BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
                "BertForQuestionAnswering")


def _wrapper(model, with_token_type: bool):
    import torch

    class BertExportWrapper(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.m = bert

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.m(**kwargs)
            return out.last_hidden_state, out.pooler_output

    class BertExportWrapperNoTokenType(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.m = bert

        def forward(self, input_ids, attention_mask):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    cls = BertExportWrapper if with_token_type else BertExportWrapperNoTokenType
    return cls(model).eval()


def _task_wrapper(model):
    import torch

    class TaskExportWrapper(torch.nn.Module):
        def __init__(self, task_model):
            super().__init__()
            self.m = task_model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
            if hasattr(out, "start_logits"):
                return out.start_logits, out.end_logits
            return out.logits

    return TaskExportWrapper(model)


def load_bert(model_dir: str | os.PathLike):
    """Load a BertModel (with pooler) from a HF folder, in eval mode."""
    from transformers import BertModel

    return BertModel.from_pretrained(str(model_dir), add_pooling_layer=True).eval()


def export_bert_onnx(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    flavour: str,
    *,
    dynamic: bool = True,
) -> str:
    """Export the BertModel in `model_dir` to `out_path` in one of FLAVOURS; return out_path.

    `dynamic=False` fixes batch 2 x sequence 8, as careless exports do: the exporter then folds
    the position lookup into a constant and the position table is lost.
    """
    require("torch", "torch==2.13.0", "to export ONNX")
    require("transformers", "transformers", "to export ONNX")
    if flavour == "dynamo":
        require("onnxscript", "onnxscript", "for torch's dynamo ONNX exporter")

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    model = load_bert(model_dir)
    with_token_type = flavour != "no_token_type"
    wrapper = _wrapper(model, with_token_type)
    _export(wrapper, model.config.vocab_size, out_path, flavour, with_token_type,
            {"last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}},
            dynamic)
    return str(out_path)


def export_task_onnx(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    flavour: str,
    *,
    eval_mode: bool = True,
) -> str:
    """Export the BertFor... model in `model_dir` to `out_dir`/model.onnx; return that path.

    config.json and the tokenizer files are copied beside it, so `out_dir` loads like the source
    folder. `eval_mode=False` leaves the export wrapper in train mode, as careless exports do: the
    dynamo exporter then writes a Dropout node (training_mode=True) after every dropout module.
    """
    import shutil

    require("torch", "torch==2.13.0", "to export ONNX")
    transformers = require("transformers", "transformers", "to export ONNX")
    if flavour == "dynamo":
        require("onnxscript", "onnxscript", "for torch's dynamo ONNX exporter")
    if flavour not in TASK_FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r} for a task model; expected one of {TASK_FLAVOURS}")
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    architecture = (config.architectures or ["?"])[0]
    if architecture not in TASK_CLASSES:
        raise ValueError(f"{str(model_dir)!r} holds a {architecture}; export_task_onnx exports one of "
                         f"{TASK_CLASSES} (export_bert_onnx exports a BertModel)")
    model = getattr(transformers, architecture).from_pretrained(str(model_dir)).eval()
    wrapper = _task_wrapper(model)
    wrapper.train(not eval_mode)
    per_token = {0: "batch", 1: "sequence"}
    if architecture == "BertForQuestionAnswering":
        outputs = {"start_logits": per_token, "end_logits": per_token}
    elif architecture == "BertForSequenceClassification":
        outputs = {"logits": {0: "batch"}}
    else:
        outputs = {"logits": per_token}
    out_path = os.path.join(str(out_dir), "model.onnx")
    _export(wrapper, config.vocab_size, out_path, flavour, True, outputs, True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        if os.path.isfile(os.path.join(str(model_dir), name)):
            shutil.copy(os.path.join(str(model_dir), name), os.path.join(str(out_dir), name))
    return out_path


def _export(wrapper, vocab: int, out_path, flavour: str, with_token_type: bool,
            output_axes: dict[str, dict[int, str]], dynamic: bool) -> None:
    import torch

    output_names = list(output_axes)

    batch, seq = 2, 8
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen, dtype=torch.int64)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.int64)
    args = (input_ids, attention_mask, token_type_ids) if with_token_type else (input_ids, attention_mask)
    input_names = ["input_ids", "attention_mask", "token_type_ids"][: len(args)]

    out_path = str(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # The exporters warn about tracing details of transformers' mask code that do not affect
    # a BERT encoder with dynamic axes; keep test and CLI output readable.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        if flavour == "dynamo":
            batch_dim = torch.export.Dim("batch")
            seq_dim = torch.export.Dim("sequence")
            dynamic_shapes = ({name: {0: batch_dim, 1: seq_dim} for name in input_names}
                              if dynamic else None)
            torch.onnx.export(
                wrapper,
                args,
                out_path,
                dynamo=True,
                opset_version=18,
                verbose=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                external_data=True,
            )
        else:
            dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
            dynamic_axes.update(output_axes)
            if not dynamic:
                dynamic_axes = None
            torch.onnx.export(
                wrapper,
                args,
                out_path,
                dynamo=False,
                opset_version=14 if flavour == "legacy14" else 17,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
