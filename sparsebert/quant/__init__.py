"""INT8 inference: quantize a dense or pruned BERT checkpoint, load it, run it on int8 kernels.

- `quantize(src, dst)` (CLI: `sparsebert quantize SRC DST`): symmetric per-output-channel int8
  weights (exact zeros stay zeros, so pruning survives), activations quantized per token at run
  time; writes a folder `sparsebert.load` reads (`sparsebert/loaders/int8_folder.py`) and a QDQ ONNX
  file ONNX Runtime runs (`onnx_export.py`), so the two can be compared.
- `quantize_model(model)`: the same, in memory.
- `Int8Linear`: the int8 linear (dense, CSR, VNNI gemm or 1x4-block codes) the model runs; kernels
  in `kernels/int8*.py`. It is runtime: `sparsebert.dispatch` builds it for int8 checkpoints,
  including int8 ONNX exports made by other tools (`loaders/onnx_quant.py`).
- `fused.FusedInt8FFN`: a layer's int8 linears fused per token tile or per sequence
  (`kernels/ffn_int8.py`), built by the model for pairs of VNNI gemm / 1x4-block linears.

The tools (quantize, calibrate, QDQ export) load on first use: `import sparsebert` imports only
`linear.py` and `fused.py` from this package.

Left out (see each module): static calibration of activation scales, int8 task heads.
"""

import importlib

__all__ = ["Int8Linear", "quantize", "quantize_model", "quantize_weight"]
_HOME = {"Int8Linear": ".linear", "quantize_weight": ".linear", "quantize": ".checkpoint",
         "quantize_model": ".checkpoint"}


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
