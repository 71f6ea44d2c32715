"""INT8 linears with the call interface of `sparsebert.linear` (`lin(x, activation=, residual=, out=)`),
checked by the helpers every kind shares (`sparsebert.linear_contract`).

`quantize_weight` makes symmetric per-output-channel codes: scale[n] = max|W[n]| / 127,
codes = rint(W / scale) (ties to even), so every exact zero stays an exact zero and a pruned weight
keeps its sparsity pattern. `Int8Linear` holds the codes dense or in CSR (chosen by sparsity) and
quantizes its input per token on each call (dynamic; `kernels/int8.py` has the arithmetic and the
int32 accumulation), then dequantizes, adds the bias, activation and residual in one pass.

Optional per-input-channel smoothing (`smooth`, SmoothQuant) moves activation outliers into the
weights; `sparsebert.quant.calibrate` measures it from texts.

Kernel kinds (`format`, shown by `inspect` and `sparsity_report`): on AVX512-VNNI CPUs "amx"
(AMX-INT8 tiles, where Linux grants them) or "gemm" (register-blocked `vpdpbusd`) for dense-ish
weights, "bsr1x4" (one `vpdpbusd` broadcast per stored 1x4 block) when few K-quads hold a nonzero
(`kernels/int8_gemm.py`, `kernels/int8_bsr.py`), "gather" (each row's nonzeros four to a quad, the
activation rows gathered at run time: unstructured weights; `kernels/int8_gather.py`) when the
tuner's timing picks it; "vnni" (the one-row quad tile) only when forced;
elsewhere "dense" and "csr". All kinds give the same outputs bit for bit (the same activation
codes, exact int32 sums, the same float epilogue): the choice is speed only.

Which kind a model runs is chosen by timing them on this machine (`sparsebert.tuning_int8`, asked
by `sparsebert.dispatch.make_linear` for int8 "auto"). An `Int8Linear(format="auto")` built
directly, outside the model, decides without timing, by the thresholds below (one-core
measurements on Sapphire Rapids, benchmarks/bench_int8_gemm.py).

Left out: static per-token activation scales, asymmetric (zero-point) weights, per-group scales.
Activations stay int8 between a layer's linears only in the fused layer (`sparsebert.quant.fused`).
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from ..errors import CheckpointError
from ..kernels import int8 as k8
from ..linear_contract import act_code, check_call, describe_linear, index_dtype

FORMATS = ("auto", "dense", "csr", "vnni", "gemm", "amx", "bsr1x4", "gather")
# Untimed "auto" on VNNI CPUs takes "bsr1x4" when at most this fraction of K-quads holds a
# nonzero. One core, Sapphire Rapids, BERT-base FFN linears: a stored 1x4 block runs at ~0.4x the
# dense VNNI kernel's rate per multiply-add, so it wins below ~0.4 of the quads; against AMX, 80%
# 1x4 (0.2) ran at 0.7-0.95x the dense AMX kernel's speed and 90% at 1.2-1.5x.
BSR1X4_MAX_QUADS = {"amx": 0.15, "gemm": 0.4}
# Untimed "auto", portable kernels (no AVX512-VNNI): CSR from this sparsity on; below, the dense
# int8 kernel does less work per stored value than the CSR row loop.
CSR_FROM_SPARSITY = 0.5


def host_has_vnni() -> bool:
    """True when this CPU runs AVX512-VNNI, which the "vnni" format's kernels need."""
    import llvmlite.binding as ll

    try:
        return bool(ll.get_host_cpu_features().get("avx512vnni"))
    except RuntimeError:
        return False


def quad_fraction(codes: np.ndarray) -> float:
    """The fraction of (row, K-quad) 1x4 blocks of (N, K) codes that hold a nonzero: the share of
    the dense multiply-adds the "bsr1x4" kind stores (K padded to a multiple of 4)."""
    N, K = codes.shape
    KQ = -(-K // 4)
    padded = np.zeros((N, KQ * 4), dtype=np.int8)
    padded[:, :K] = codes
    return float(padded.reshape(N, KQ, 4).any(axis=2).mean())


def dense_vnni_kind() -> str:
    """The dense kind of a VNNI CPU: "amx" where this process may use AMX tiles, else "gemm"."""
    from ..kernels import int8_gemm

    return "amx" if int8_gemm.amx_available() else "gemm"


def untimed_kind(codes: np.ndarray) -> str:
    """What "auto" means without timing: the thresholds above, by CPU features and sparsity."""
    if host_has_vnni():
        dense = dense_vnni_kind()
        return "bsr1x4" if quad_fraction(codes) <= BSR1X4_MAX_QUADS[dense] else dense
    N, K = codes.shape
    return "csr" if 1.0 - np.count_nonzero(codes) / (N * K) >= CSR_FROM_SPARSITY else "dense"


_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)
_NO_CODES = np.zeros((1, 1, 1), dtype=np.int8)


def quantize_weight(weight: np.ndarray, smooth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float -> (codes int8 (N, K), scale float32 (N,)) of W * smooth[None, :] (smooth (K,)
    > 0, default ones: see `Int8Linear`); an all-zero row gets scale 0."""
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2 or not np.isfinite(w).all():
        raise CheckpointError(f"weight to quantize must be a finite 2-D array, got {w.dtype} {w.shape}")
    if smooth is not None:
        w = w * _check_smooth(smooth, w.shape[1])[None, :]
    scale = (np.abs(w).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    codes = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    return codes, scale


class _Codes(threading.local):
    """Per-thread buffers for a call's activation codes (B*K*S bytes each, reused across calls)."""

    def get(self, name, shape, dtype):
        size = int(np.prod(shape))
        buf = self.__dict__.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(size, dtype=dtype)
            self.__dict__[name] = buf
        return buf[:size].reshape(shape)


_SCRATCH = _Codes()


def check_codes(codes) -> tuple[int, int]:
    """(N, K) of valid weight codes: a 2-D int8 array, positive shape, no -128."""
    if not isinstance(codes, np.ndarray) or codes.dtype != np.int8 or codes.ndim != 2:
        raise CheckpointError(
            f"int8 weight codes must be a 2-D int8 array, got "
            f"{getattr(codes, 'dtype', type(codes).__name__)} {getattr(codes, 'shape', '')}"
        )
    N, K = codes.shape
    if N < 1 or K < 1:
        raise CheckpointError(f"int8 weight shape must be positive, got {(N, K)}")
    if codes.min(initial=0) < -127:
        raise CheckpointError("int8 weight codes hold -128; symmetric quantization uses [-127, 127]")
    return N, K


def _check_smooth(smooth, K) -> np.ndarray:
    s = np.asarray(smooth)
    if s.shape != (K,) or not np.issubdtype(s.dtype, np.floating) or not np.isfinite(s).all() \
            or not (s > 0).all():
        raise CheckpointError(f"smoothing factors must be finite, positive floats of shape ({K},), "
                              f"got {s.dtype} {s.shape}")
    return np.ascontiguousarray(s, dtype=np.float32)


class Int8Linear:
    """Y[b] (N, S) = act(W (N, K) @ X[b] (K, S) + bias) (+ residual) with W int8 codes x per-row
    scale and X quantized per token on the fly. Build with `from_float` or from stored codes.

    Formats: see the module docstring; "auto" (untimed: `untimed_kind`) takes "amx" / "gemm" /
    "bsr1x4" where the CPU has AVX512-VNNI, else "dense" (token-major codes) or "csr" (from 50%
    sparsity). `sparsebert.tuning_int8.choose_int8` times the kinds instead.

    smooth (K,) (SmoothQuant, Xiao et al. 2023): the codes stand for W * smooth[None, :] and the
    activations are quantized as X / smooth[:, None]; the product is the same, but outlier input
    channels (large smooth) lose less precision in the activations' shared per-token scale."""

    block_shape = None

    def __init__(self, codes: np.ndarray, scale: np.ndarray, bias: np.ndarray, format: str = "auto",
                 smooth: np.ndarray | None = None):
        """Validates codes int8 (N, K), scale float32 (N,) finite and >= 0, bias float (N,),
        smooth float (K,) > 0 (ones when None)."""
        if format not in FORMATS:
            raise ValueError(f"unknown int8 linear format {format!r}; expected one of {FORMATS}")
        N, K = check_codes(codes)
        scale = np.asarray(scale)
        if scale.shape != (N,) or not np.issubdtype(scale.dtype, np.floating):
            raise CheckpointError(f"weight scale must be a float array of shape ({N},), got "
                                  f"{scale.dtype} {scale.shape}")
        if not np.isfinite(scale).all() or (scale < 0).any():
            raise CheckpointError("weight scale must be finite and non-negative")
        bias = np.asarray(bias)
        if bias.shape != (N,) or not np.issubdtype(bias.dtype, np.floating) or not np.isfinite(bias).all():
            raise CheckpointError(f"bias must be a finite float array of shape ({N},), got {bias.dtype} {bias.shape}")
        self.out_features, self.in_features = N, K
        self.smooth = np.ones(K, np.float32) if smooth is None else _check_smooth(smooth, K)
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        nnz = int(np.count_nonzero(codes))
        if format == "auto":
            format = untimed_kind(codes)
        elif format in ("vnni", "gemm", "bsr1x4", "amx", "gather") and not host_has_vnni():
            raise ValueError(f"format {format!r} needs a CPU with AVX512-VNNI; use 'auto', 'dense' or 'csr'")
        if format == "amx":
            from ..kernels import int8_gemm

            if not int8_gemm.amx_available():
                raise ValueError("format 'amx' needs a CPU with AMX-INT8 and Linux's permission for its "
                                 "tile state (kernel 5.16+); use 'auto' or 'gemm'")
        self.format = f"int8-{format}"
        self._nnz = nnz
        if format == "dense":
            self.codes = np.ascontiguousarray(codes)
            arrays = (self.codes,)
        elif format == "vnni":
            from ..kernels import int8_vnni

            (self.quads, self.quad_index, self.indptr, self.chunk_quads,
             self.rowsum) = int8_vnni.pack_weight(codes)
            arrays = (self.quads, self.quad_index, self.indptr, self.rowsum)
        elif format == "bsr1x4":
            from ..kernels import int8_bsr

            (self.quads, self.quad_index, self.indptr, self.chunk_quads,
             self.rowsum) = int8_bsr.pack_bsr1x4(codes)
            arrays = (self.quads, self.quad_index, self.indptr, self.rowsum)
        elif format == "gather":
            from ..kernels import int8_gather

            self.gather_index, self.quads, self.indptr, self.rowsum = int8_gather.pack_gather(codes)
            arrays = (self.gather_index, self.quads, self.indptr, self.rowsum)
        elif format in ("gemm", "amx"):
            from ..kernels import int8_gemm

            pack = int8_gemm.pack_weight_amx if format == "amx" else int8_gemm.pack_weight_vnni
            self.packed = pack(codes)
            self.rowsum = codes.astype(np.int32).sum(axis=1).astype(np.int32)
            arrays = (self.packed, self.rowsum)
        else:
            rows, cols = np.nonzero(codes)
            self.indptr = np.zeros(N + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=N), out=self.indptr[1:])
            self.data = np.ascontiguousarray(codes[rows, cols])
            self.indices = cols.astype(index_dtype(K))
            arrays = (self.data, self.indices, self.indptr)
        for a in arrays + (self.scale, self.bias, self.smooth):
            a.flags.writeable = False

    @classmethod
    def from_float(cls, weight, bias, format="auto", smooth=None) -> "Int8Linear":
        codes, scale = quantize_weight(weight, smooth)
        return cls(codes, scale, bias, format, smooth)

    def _arrays(self):
        if self.format == "int8-dense":
            return (self.codes,)
        if self.format in ("int8-vnni", "int8-bsr1x4"):
            return (self.quads, self.quad_index, self.indptr, self.rowsum)
        if self.format in ("int8-gemm", "int8-amx"):
            return (self.packed, self.rowsum)
        if self.format == "int8-gather":
            return (self.gather_index, self.quads, self.indptr, self.rowsum)
        return (self.data, self.indices, self.indptr)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays()) + sum(
            a.nbytes for a in (self.scale, self.bias, self.smooth))

    @property
    def nnz(self) -> int:
        return self._nnz

    @property
    def stored_macs(self) -> int:
        if self.format in ("int8-dense", "int8-gemm", "int8-amx"):
            return self.out_features * self.in_features
        if self.format in ("int8-vnni", "int8-bsr1x4", "int8-gather"):
            return int(self.quads.size * 4)
        return int(self.data.size)

    def to_codes(self) -> np.ndarray:
        """The (N, K) int8 codes, dense."""
        N, K = self.out_features, self.in_features
        if self.format == "int8-dense":
            return self.codes.copy()
        if self.format == "int8-gemm":  # (NB, KQ, RB) words -> (NB, RB, KQ, 4) codes
            nb, kq, rb = self.packed.shape
            w = self.packed.view(np.int8).reshape(nb, kq, rb, 4).transpose(0, 2, 1, 3)
            return np.ascontiguousarray(w.reshape(nb * rb, kq * 4)[:N, :K])
        if self.format == "int8-amx":  # (M16, KB, 16, 64) tiles -> rows x features
            m16, kb = self.packed.shape[:2]
            w = self.packed.transpose(0, 2, 1, 3).reshape(m16 * 16, kb * 64)
            return np.ascontiguousarray(w[:N, :K])
        if self.format in ("int8-vnni", "int8-bsr1x4"):
            KQ = -(-self.in_features // 4)
            w = np.zeros((self.out_features, KQ, 4), dtype=np.int8)
            counts = np.diff(self.indptr, axis=1)  # (chunks, N): entries per (chunk, row)
            rows = np.concatenate([np.repeat(np.arange(self.out_features), c) for c in counts])
            chunk = np.repeat(np.arange(counts.shape[0]), counts.sum(axis=1))
            quad = self.quad_index.astype(np.int64) + chunk * self.chunk_quads
            w[rows, quad] = self.quads.view(np.int8).reshape(-1, 4)
            return w.reshape(self.out_features, -1)[:, : self.in_features].copy()
        w = np.zeros((self.out_features, self.in_features), dtype=np.int8)
        if self.format == "int8-gather":  # padding codes are 0 at a column the row already holds
            rows = np.repeat(np.arange(self.out_features), 4 * np.diff(self.indptr))
            codes = self.quads.view(np.int8)
            kept = codes != 0
            w[rows[kept], self.gather_index[kept]] = codes[kept]
            return w
        rows = np.repeat(np.arange(self.out_features), np.diff(self.indptr))
        w[rows, self.indices] = self.data
        return w

    def dequantized(self) -> np.ndarray:
        """The float32 weight the codes stand for: codes * scale[:, None] / smooth[None, :]."""
        return self.to_codes().astype(np.float32) * self.scale[:, None] / self.smooth[None, :]

    def describe(self) -> dict:
        # The shared row, with this kind's own format name (the block shape is not a bsr format
        # here) and the K-chunks of the chunked kernels.
        row = describe_linear(self)
        row.update(format=self.format,
                   block_shape=(1, 4) if self.format == "int8-bsr1x4" else None,
                   k_chunks=int(self.indptr.shape[0]) if self.format in ("int8-vnni", "int8-bsr1x4")
                   else 1)
        return row

    def __call__(self, x: np.ndarray, *, activation=None, residual=None, out=None) -> np.ndarray:
        x, residual = check_call(self, x, residual, out)
        B, K, S = x.shape
        shape = (B, self.out_features, S)
        y = np.empty(shape, dtype=np.float32) if out is None else out
        if y.size == 0:
            return y
        act = act_code(activation)
        res, has_res = (_NO_RESIDUAL, False) if residual is None else (residual, True)
        x_scale = _SCRATCH.get("x_scale", (B, S), np.float32)
        # Enough row chunks that every thread gets several tasks, even at batch size 1.
        rows = max(4, -(-self.out_features // -(-8 * numba.config.NUMBA_NUM_THREADS // B)))
        if self.format in ("int8-gemm", "int8-amx", "int8-bsr1x4"):
            from ..kernels import int8_bsr as kb
            from ..kernels import int8_gemm as kg
            from ..kernels import int8_vnni as kv

            xp = _SCRATCH.get("packed", (B, kg.packed_quads(K), -(-S // kg.TOKENS) * kg.TOKENS, 4),
                              np.uint8)
            kv.quantize_pack(x, self.smooth, xp, x_scale)
            if self.format == "int8-bsr1x4":
                kb.spmm_int8_bsr1x4(self.quads, self.quad_index, self.indptr, self.chunk_quads,
                                    self.rowsum, xp, S, self.scale, x_scale, self.bias, act, res,
                                    has_res, y)
            elif self.format == "int8-gemm":
                kg.gemm_int8_vnni(self.packed, self.rowsum, xp, S, self.scale, x_scale, self.bias,
                                  act, res, has_res, y)
            elif kg.amx_available():  # asks Linux for the tile state in this process (unpickled?)
                kg.gemm_int8_amx(self.packed, self.rowsum, xp, S, self.scale, x_scale, self.bias,
                                 act, res, has_res, y, kg.TILE_CONFIG)
            else:
                raise RuntimeError("this process may not use AMX tiles (arch_prctl refused); "
                                   "rebuild the linear with format='gemm'")
        elif self.format == "int8-gather":
            from ..kernels import int8_gather as kq

            xr = _SCRATCH.get("rows", (B, K, -(-S // kq.TOKENS) * kq.TOKENS), np.uint8)
            kq.quantize_rows(x, self.smooth, xr, x_scale)
            kq.spmm_int8_gather(self.gather_index, self.quads, self.indptr, self.rowsum, xr, S, self.scale,
                                x_scale, self.bias, act, res, has_res, y)
        elif self.format == "int8-vnni":
            from ..kernels import int8_vnni as kv

            xp = _SCRATCH.get("packed", (B, -(-K // 4), -(-S // kv.TILE) * kv.TILE, 4), np.uint8)
            kv.quantize_pack(x, self.smooth, xp, x_scale)
            kv.spmm_int8_vnni(self.quads, self.quad_index, self.indptr, self.chunk_quads, self.rowsum,
                              xp, S, self.scale, x_scale, self.bias, act, res, has_res, rows, y)
        elif self.format == "int8-dense":
            qt = _SCRATCH.get("codes", (B, S, K), np.int8)
            k8.quantize_tokens(x, self.smooth, _NO_CODES, qt, x_scale, True)
            k8.gemm_int8(self.codes, self.scale, qt, x_scale, self.bias, act, res, has_res, rows, y)
        else:
            q = _SCRATCH.get("codes", (B, K, S), np.int8)
            k8.quantize_tokens(x, self.smooth, q, _NO_CODES, x_scale, False)
            k8.spmm_int8_csr(self.data, self.indices, self.indptr, q, self.scale, x_scale, self.bias,
                             act, res, has_res, rows, y)
        return y
