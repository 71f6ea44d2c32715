"""INT8 weight matmuls: dynamic per-token activation quantization, int32 accumulation, fused epilogue.

Computes, for every sequence b in sparsebert's layout (see `sparsebert.kernels`),

    Y[b] (N, S) = act(deq(Wq (N, K) @ Xq[b] (K, S)) + bias[:, None]) (+ residual[b])
    deq(A)[n, s] = float32(A[n, s]) * (w_scale[n] * x_scale[b, s])

with Wq int8, symmetric per output channel (w_scale (N,)), and Xq int8, symmetric per token
(x_scale (B, S)), made from the float activations by `quantize_tokens`: x_scale = max|x| / 127 over
the token's K features, Xq = clip(rint(x * (1 / x_scale)), -127, 127) (ties to even, as ONNX
QuantizeLinear, which divides: a code may differ by one where x / scale lies within an ulp of a
half; an all-zero token gets scale 0 and zero codes). Products of int8 codes sum exactly in int32
(|sum| <= K * 127^2 < 2^31 for K < 133,000), so the integer part equals a numpy int32 matmul bit
for bit, whatever the order; only the float epilogue rounds.

Kernels (act: 0 none, 1 exact GELU, 2 tanh GELU, 3 relu, as `spmm_epilogue.epilogue_inplace`):
- `quantize_tokens(X, Q, QT, x_scale, token_major)`: X (B, K, S) float32 -> Q (B, K, S) int8
  (feature-major, for CSR) or QT (B, S, K) int8 (token-major, for dense); x_scale (B, S).
- `gemm_int8(Wq, w_scale, QT, x_scale, bias, act, R, has_residual, rows, Y)`: dense Wq (N, K) over
  token-major codes. The K loop is an int32 dot product of sign-extended int8 pairs, the pattern
  LLVM turns into AVX-VNNI / AVX512-VNNI `vpdpwssd` where the CPU has it (`vpmaddwd` elsewhere).
- `spmm_int8_csr(data, indices, indptr, Q, w_scale, x_scale, bias, act, R, has_residual, rows, Y)`:
  CSR Wq over feature-major codes; each nonzero adds w * Xq[b, k, :] to an int32 row of sums.
- `gemm_int8_acc`, `spmm_int8_csr_acc`: the same integer sums, written as int32 (B, N, S): what the
  conformance tests compare bit for bit with numpy.

Contract (validated once by `sparsebert.quant`): all arrays C-contiguous; Wq/data int8; indices
int32/uint16 in [0, K); indptr int64 (N + 1,) non-decreasing from 0 to nnz; w_scale, bias float32
(N,); x_scale float32 (B, S); R float32 (B, N, S) when has_residual; Y float32 (B, N, S); rows >= 1.

Left out: K-chunked panels and register tiles (the FP32 spmm's tricks), BSR, static (calibrated)
activation scales inside the kernels (they arrive as x_scale like dynamic ones), requantized outputs.
References: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; Intel, "Lower Numerical Precision Deep Learning Inference"
(VNNI); ONNX QuantizeLinear / DequantizeLinear operator specs.
"""

import numpy as np
from numba import prange

from .jit import helper, parallel_kernel
from .spmm_epilogue import epilogue_inplace

_I32 = np.int32
_QMAX = np.float32(127.0)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@helper
def token_scales(xf, b, K, S, s0, width, inv_smooth, x_scale, inv):
    # Per-token scales of the tokens [s0, s0 + width) of sequence b of flat X (B, K, S):
    # x_scale[b, s] = max_k |X * inv_smooth[k]| / 127, and into inv[s - s0] the reciprocals used for
    # the codes (0 for an all-zero token). Codes are x * (1 / scale), one explicit reciprocal per
    # token: fastmath's `arcp` would otherwise divide in one loop and multiply by a hoisted
    # reciprocal in another, and two layouts' codes could differ in the last place before rounding.
    us, uw = np.uint64(S), np.uint64(width)
    amax = np.zeros(width, dtype=np.float32)
    base = np.uint64(b) * np.uint64(K) * us + np.uint64(s0)
    for k in range(np.uint64(K)):
        o = base + k * us
        m = inv_smooth[k]
        for j in range(uw):
            amax[j] = max(amax[j], abs(xf[o + j] * m))
    for j in range(width):
        sc = amax[j] / _QMAX
        x_scale[b, s0 + j] = sc
        inv[j] = _ONE / sc if sc > _ZERO else _ZERO


@parallel_kernel
def quantize_tokens(X, smooth, Q, QT, x_scale, token_major):
    # X (B, K, S) float32, smooth (K,) float32 > 0 -> Z = X[b, k, s] / smooth[k] (as the product
    # X * (1 / smooth), computed here), x_scale (B, S) = max_k |Z[b, :, s]| / 127 and codes
    # rint(Z / scale) clipped to +-127, into QT (B, S, K) if token_major else into Q (B, K, S)
    # (the other output is not touched and may be a dummy). Finite X assumed.
    B, K, S = X.shape
    xf = X.reshape(X.size)
    uk, us = np.uint64(K), np.uint64(S)
    inv_smooth = np.empty(K, dtype=np.float32)
    for k in range(K):
        inv_smooth[k] = _ONE / smooth[k]
    for b in prange(B):
        inv = np.empty(S, dtype=np.float32)
        token_scales(xf, b, K, S, 0, S, inv_smooth, x_scale, inv)
        base = np.uint64(b) * uk * us
        if token_major:
            qf = QT.reshape(QT.size)
            for s in range(us):
                r = inv[s]
                qo = (np.uint64(b) * us + s) * uk
                for k in range(uk):
                    v = np.rint((xf[base + k * us + s] * inv_smooth[k]) * r)
                    qf[qo + k] = np.int8(min(max(v, -_QMAX), _QMAX))
        else:
            qf = Q.reshape(Q.size)
            for k in range(uk):
                o = base + k * us
                m = inv_smooth[k]
                for s in range(us):
                    v = np.rint((xf[o + s] * m) * inv[s])
                    qf[o + s] = np.int8(min(max(v, -_QMAX), _QMAX))


@helper
def _dot(wf, w0, xf, x0, K):
    # int32 dot product of weight row wf[w0 : w0 + K] with one token's codes xf[x0 : x0 + K]:
    # sign-extended int8 pairs summed in int32, which LLVM turns into (v)pmaddwd / vpdpwssd.
    # (Four rows per pass sharing each code load compiled to vpmulld instead, 2x slower.)
    a = _I32(0)
    for k in range(np.uint64(K)):
        a = _I32(a + _I32(xf[x0 + k]) * _I32(wf[w0 + k]))
    return a


@parallel_kernel
def gemm_int8(Wq, w_scale, QT, x_scale, bias, act, R, has_residual, rows, Y):
    B, S, K = QT.shape
    N = Wq.shape[0]
    chunks = (N + rows - 1) // rows
    wf, xf = Wq.reshape(Wq.size), QT.reshape(QT.size)
    yf, rf = Y.reshape(Y.size), R.reshape(R.size)
    uk, us = np.uint64(K), np.uint64(S)
    for i in prange(B * chunks):
        b = i // chunks
        n0 = (i - b * chunks) * rows
        n1 = min(N, n0 + rows)
        x0 = np.uint64(b) * us * uk
        for n in range(n0, n1):
            off = np.uint64((b * N + n) * S)
            ws = w_scale[n]
            for s in range(us):
                a = _dot(wf, np.uint64(n) * uk, xf, x0 + s * uk, K)
                yf[off + s] = np.float32(a) * (ws * x_scale[b, s])
            epilogue_inplace(yf, off, us, bias[n], act, rf, off, has_residual)


@parallel_kernel
def gemm_int8_acc(Wq, QT, A):
    # A (B, N, S) int32 = Wq (N, K) @ QT[b].T, the integer sums of `gemm_int8`.
    B, S, K = QT.shape
    N = Wq.shape[0]
    wf, xf = Wq.reshape(Wq.size), QT.reshape(QT.size)
    uk, us = np.uint64(K), np.uint64(S)
    for i in prange(B * N):
        b = i // N
        n = i - b * N
        for s in range(us):
            A[b, n, s] = _dot(wf, np.uint64(n) * uk, xf, (np.uint64(b) * us + s) * uk, K)


@helper
def _finish_row(acc, yf, off, S, ws, xs, b, bias, act, rf, has_residual):
    # yf[off + s] = epilogue(float32(acc[s]) * (ws * x_scale[b, s])).
    for s in range(S):
        yf[off + np.uint64(s)] = np.float32(acc[s]) * (ws * xs[b, s])
    epilogue_inplace(yf, off, np.uint64(S), bias, act, rf, off, has_residual)


@helper
def _csr_row(data, indices, start, end, qf, b, K, S, acc):
    # acc[s] = sum over p in [start, end) of data[p] * Q[b, indices[p], s], int32.
    us = np.uint64(S)
    for s in range(us):
        acc[s] = _I32(0)
    base = np.uint64(b) * np.uint64(K) * us
    for p in range(start, end):
        w = _I32(data[p])
        xo = base + np.uint64(indices[p]) * us
        for s in range(us):
            acc[s] = _I32(acc[s] + w * _I32(qf[xo + s]))


@parallel_kernel
def spmm_int8_csr(data, indices, indptr, Q, w_scale, x_scale, bias, act, R, has_residual, rows, Y):
    B, K, S = Q.shape
    N = indptr.shape[0] - 1
    chunks = (N + rows - 1) // rows
    qf, yf, rf = Q.reshape(Q.size), Y.reshape(Y.size), R.reshape(R.size)
    for i in prange(B * chunks):
        b = i // chunks
        n0 = (i - b * chunks) * rows
        n1 = min(N, n0 + rows)
        acc = np.empty(S, dtype=np.int32)
        for n in range(n0, n1):
            _csr_row(data, indices, indptr[n], indptr[n + 1], qf, b, K, S, acc)
            off = np.uint64((b * N + n) * S)
            _finish_row(acc, yf, off, S, w_scale[n], x_scale, b, bias[n], act, rf, has_residual)


@parallel_kernel
def spmm_int8_csr_acc(data, indices, indptr, Q, A):
    # A (B, N, S) int32 = the integer sums of `spmm_int8_csr`.
    B, K, S = Q.shape
    N = indptr.shape[0] - 1
    qf = Q.reshape(Q.size)
    for i in prange(B * N):
        b = i // N
        n = i - b * N
        _csr_row(data, indices, indptr[n], indptr[n + 1], qf, b, K, S, A[b, n])
