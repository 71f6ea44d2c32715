"""The one place a weight becomes a linear: (weight, bias, int8 form or None, format) -> a Linear.

Every encoder linear the model builds comes through `make_linear`; the kinds it can build live in
their own modules and know nothing of each other or of this choice:

- float: `sparsebert.linear` (`DenseLinear` on BLAS, `CSRLinear`, `BSRLinear`), with "auto" asking
  the tuner (`sparsebert.tuning.choose`: timed on this CPU, cached on disk);
- int8: `sparsebert.quant.linear.Int8Linear` (dense, CSR, AVX512-VNNI, AMX or 1x4 block codes;
  activations quantized per token at run time; kernels in `kernels/int8*.py`), with int8 "auto"
  asking the int8 tuner (`sparsebert.tuning_int8.choose_int8`: timed on this CPU, cached in the
  same file).

A new kernel plugs in here: give its Linear class the call interface of `sparsebert.linear`
(`lin(x, activation=, residual=, out=)`, `describe()`; the checks and the describe row every kind
shares are in `sparsebert.linear_contract`), add its format name to `FLOAT_FORMATS` or
`INT8_FORMATS`, and one branch to `make_linear`.

`formats`, the user's choice (`sparsebert.load(path, formats=...)`), is one type, `Formats`:
None (= "auto"), a format name for every encoder linear, or a function (internal name, float
weight) -> format name, asked per linear ("qkv", "attn_out", "ffn_in", "ffn_out"). Format names:

- float: "auto", "dense", "csr", "bsr" (the cheapest block shape that fits), "bsrRxC";
- int8: "int8" (= "int8-auto": the fastest kind by timing; on AVX512-VNNI CPUs AMX tiles where the
  CPU has AMX-INT8, else the register-blocked VNNI gemm, against 1x4 block-sparse when few enough
  K-quads hold a nonzero, and the gather kind for unstructured weights; without VNNI dense against
  CSR when sparse enough), "int8-dense", "int8-csr", "int8-vnni" (the older per-token-row VNNI
  kernel), "int8-gemm", "int8-amx", "int8-bsr1x4", "int8-gather"; on a float weight they quantize it on load (symmetric per-output-channel,
  `quantize_weight`).

How a name applies to a linear the checkpoint stores in int8 (`Int8Weight`):
- w8a8 checkpoints (`sparsebert quantize` folders, QDQ and dynamic ONNX exports): "auto", "dense"
  and "csr" name the int8 kernel ("int8-auto", "int8-dense", "int8-csr"), as do the int8 names;
  the file's own codes and scales run, bit for bit;
- weight-only exports (activations float in the file): float names run the float weight the file
  computes (codes * scale), which agrees with ONNX Runtime to float rounding; an int8 name runs the
  file's codes with activations quantized per token, the user's explicit trade of accuracy for speed.

Every linear built here records how its kind was chosen (`choice`, in `describe()`): "measured" or
"cache" for "auto" (float and int8), "forced" for a named format.

Left out: choosing between float and int8 by timing (int8 trades accuracy; the user opts in).
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np

from . import linear, linear_contract, tuning, tuning_int8
from .quant.linear import Int8Linear, quantize_weight
from .weights import Int8Weight

FLOAT_FORMATS = linear.FORMATS
INT8_FORMATS = ("int8", "int8-auto", "int8-dense", "int8-csr", "int8-vnni", "int8-gemm", "int8-amx",
                "int8-bsr1x4", "int8-gather")
# Float names that, on a w8a8 checkpoint's int8 weight, name its int8 kernel.
_ON_INT8 = {"auto": "auto", "dense": "dense", "csr": "csr"}

Formats = Union[None, str, Callable[[str, np.ndarray], str]]


def check_formats(formats: Formats) -> Callable[[str, np.ndarray], str]:
    """The user's `formats` as a function (internal name, weight) -> format name; a bad value
    raises ValueError at load, before any linear is built."""
    if formats is None:
        return lambda name, w: "auto"
    if isinstance(formats, str):
        check_format(formats)
        return lambda name, w: formats
    if callable(formats):
        return formats
    raise ValueError(f"formats must be a format name or a callable (name, weight) -> format name, "
                     f"got {formats!r}")


def check_format(fmt) -> str:
    if fmt not in FLOAT_FORMATS and fmt not in INT8_FORMATS:
        raise ValueError(f"unknown linear format {fmt!r}; expected one of "
                         f"{FLOAT_FORMATS + INT8_FORMATS}")
    return fmt


def make_linear(weight: np.ndarray, bias: np.ndarray, format: str = "auto",
                int8: Int8Weight | None = None):
    """Build the linear for one (N, K) float weight (and its stored int8 form, if any) and (N,)
    bias in the requested format (see the module docstring). The linear's `choice` says how its
    format was chosen."""
    check_format(format)
    if int8 is not None:
        if format in INT8_FORMATS:
            return _int8_linear(int8.codes, int8.scale, bias, _int8_kind(format), int8.smooth, format)
        if int8.activations == "per-token":
            if format not in _ON_INT8:
                raise ValueError(f"a linear stored in int8 takes formats {tuple(_ON_INT8)} or "
                                 f"{INT8_FORMATS}, got {format!r}")
            return _int8_linear(int8.codes, int8.scale, bias, _ON_INT8[format], int8.smooth, format)
        # weight-only: the float weight (codes * scale, as the file computes it) in a float format
    if format in INT8_FORMATS:
        codes, scale = quantize_weight(weight)
        return _int8_linear(codes, scale, bias, _int8_kind(format), None, format)
    if format == "auto":
        return tuning.choose(linear_contract.check_dense(weight, bias), bias)
    lin = linear.build_linear(weight, bias, format)
    lin.choice = {"by": "forced", "requested": format}
    return lin


def _int8_linear(codes, scale, bias, kind: str, smooth, requested: str) -> Int8Linear:
    if kind == "auto":
        return tuning_int8.choose_int8(codes, scale, bias, smooth)
    lin = Int8Linear(codes, scale, bias, kind, smooth)
    lin.choice = {"by": "forced", "requested": requested}
    return lin


def _int8_kind(format: str) -> str:
    return "auto" if format in ("int8", "int8-auto") else format[len("int8-"):]
