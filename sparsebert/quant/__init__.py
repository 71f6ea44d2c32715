"""INT8 inference: quantize a dense or pruned BERT checkpoint, load it, run it on int8 kernels.

- `quantize(src, dst)` (CLI: `sparsebert quantize SRC DST`): symmetric per-output-channel int8
  weights (exact zeros stay zeros, so pruning survives), activations quantized per token at run
  time; writes a folder `sparsebert.load` reads (see `checkpoint.py` for the format) and a QDQ ONNX
  file ONNX Runtime runs (`onnx_export.py`), so the two can be compared.
- `quantize_model(model)`: the same, in memory.
- `Int8Linear`: the int8 linear (dense or CSR codes) the model runs; kernels in `kernels/int8.py`.

Left out (see each module): static calibration of activation scales, BSR int8, reading int8 ONNX
exports made by other tools, int8 task heads.
"""

from .checkpoint import quantize, quantize_model, read_quantization
from .linear import Int8Linear, quantize_weight

__all__ = ["Int8Linear", "quantize", "quantize_model", "quantize_weight", "read_quantization"]
