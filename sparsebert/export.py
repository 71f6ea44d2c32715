"""Export a Hugging Face BertModel folder to ONNX in the flavours real-world exports come in.

Needs the dev extra (torch, transformers; onnxscript for dynamo): it makes the ONNX Runtime
baseline of benchmarks and the reference exports of tests. Not needed to run sparsebert.

Flavours (all output `last_hidden_state` and `pooler_output`, with dynamic batch and sequence axes):
  legacy14        torch.onnx.export(dynamo=False), opset 14: LayerNorm decomposed into
                  ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add, GELU as Div/Erf/Add/Mul/Mul.
  legacy17        dynamo=False, opset 17: one LayerNormalization node per LayerNorm.
  dynamo          dynamo=True, opset 18: Gelu nodes, weights in an external `<name>.onnx.data` file.
  no_token_type   legacy17 without the `token_type_ids` input (the model uses its all-zero default).

transformers 5 fails when BertModel.forward gets positional arguments, so the export goes through a
small wrapper module that calls it with keywords. What is deliberately left out: fp16/int8 exports,
optimum/onnxruntime-transformers fused graphs (Attention, SkipLayerNormalization nodes).
"""

from __future__ import annotations

import os

from .errors import require
import warnings

FLAVOURS = ("legacy14", "legacy17", "dynamo", "no_token_type")


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
    torch = require("torch", "torch==2.13.0", "to export ONNX")
    require("transformers", "transformers", "to export ONNX")
    if flavour == "dynamo":
        require("onnxscript", "onnxscript", "for torch's dynamo ONNX exporter")

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    model = load_bert(model_dir)
    with_token_type = flavour != "no_token_type"
    wrapper = _wrapper(model, with_token_type)

    batch, seq = 2, 8
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen, dtype=torch.int64)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.int64)
    args = (input_ids, attention_mask, token_type_ids) if with_token_type else (input_ids, attention_mask)
    input_names = ["input_ids", "attention_mask", "token_type_ids"][: len(args)]
    output_names = ["last_hidden_state", "pooler_output"]

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
            dynamic_axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
            dynamic_axes["pooler_output"] = {0: "batch"}
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
    return out_path
