"""Multi-head self-attention with its two matmuls in integers on AVX512-VNNI, for int8 models.

Same contract as `attention.attention` (qkv (B, 3H, T) float32 Q, K, V row blocks, key_bias (B, T),
ctx (B, H, T)); the two products run as VNNI register tiles (`int8_gemm.block_vnni_strided` and
`block_vnni16_strided`, 4 rows x 64 queries) instead of float32 BLAS:

- QK^T in int8 (`vpdpbusd`): Q per query and K per key are quantized symmetrically to int8 over the
  head's D features (the per-token scheme of the int8 linears, `int8.token_scales`); Q is packed as
  the unsigned operand (code + 128, quads of 4 features x queries, `int8_vnni.pack_quads`), K's
  codes are the signed words, and 128 x the key's code sum is taken off the int32 sums, which are
  exact. The scores s[j, r] = sums * (scale * sk[j] * sq[r]) + key_bias[j] are float32, key-major
  as in attention.py, and the softmax exps (max-subtracted, in (0, 1]) are float32.
- PV in int16 (`vpdpwssd`, 2 keys per 32-bit lane, half `vpdpbusd`'s multiply-adds): the exps are
  coded round(2047 e) (the largest of each query is 2047), V is quantized per feature row over the
  sequence's keys to +-1023 (scale sv[d]), so ctx[d, r] = sums * sv[d] / total[r], total[r] the
  query's code sum: the softmax's normalisation uses the same codes as the product. With these
  ranges 512 keys' sums stay inside int32. (8-bit codes here, `vpdpbusd` again, cost MiniLM's int8
  model 5e-5 of mean cosine to FP32, taking it under 0.999; 11-12 bits cost ~1e-5.)

Accuracy: `benchmarks/int8_accuracy.py` measures the int8 model with this attention (the default).
Padding keys (bias -1e30) get code 0; a row whose keys are all padding gets a uniform softmax, as in
attention.py.

Scratch per (sequence, head), T <= 512: scores (T4, TP) float32, P codes (T4 / 2, TP) words, Q
(DQ, TP) words, K (DQ, T4) words, V codes (D4, T4) int16; T4 = T rounded up to 4, TP to 64, D4 = D
to 4, DQ = D4 / 4. All of it is in L2 (~100 KiB at T = 128).

Contract (validated by the caller, `sparsebert.model`): the CPU has AVX512-VNNI (on others this
file must not be compiled); C-contiguous float32 arrays of the shapes above, H divisible by heads.
The intrinsic reads through raw pointers: the buffers' padding, sized here from T and D, keeps it
in bounds.
"""

import numpy as np
from numba import prange

from .attention import exp_shifted
from .int8 import token_scales
from .int8_gemm import RB, block_vnni16_strided, block_vnni_strided
from .int8_vnni import pack_quads
from .jit import helper, kernel, parallel_kernel

# Numba's on-disk cache keys a kernel on its own file, not on the helpers it inlines from other
# files; tests/test_ffn_int8.py fails until this stamp matches them.
BUILT_AGAINST = "attention.py 839209a8831a6388, int8.py e8cb762509f1d006, int8_gemm.py bfe0e0dc7e8c6e38, int8_vnni.py 481ed9f95056e5e2"
_TQ = 64  # queries per register tile
_NEG_INF = np.float32(-np.inf)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_P_MAX = np.float32(2047.0)  # PV's operands: 12-bit probability codes, 11-bit signed V codes, so
_V_MAX = np.float32(1023.0)  # 512 keys' int32 sums stay below 2^31 (512 x 2047 x 1023 < 2^30)
_Q_MAX = np.float32(127.0)
_FLIP = np.uint32(0x80808080)
_EVEN = np.uint32(0x00FF00FF)


@helper
def scratch(T, D):
    """The per-task buffers of `one_head_int8` for sequences of T tokens and heads of D features."""
    T4 = (T + 3) // 4 * 4
    TP = (T + _TQ - 1) // _TQ * _TQ
    DQ = (D + 3) // 4
    s = np.empty((T4, TP), dtype=np.float32)
    pw = np.zeros((T4 // 2) * TP, dtype=np.uint32)
    qw = np.empty(DQ * TP, dtype=np.uint32)
    kw = np.zeros(DQ * T4, dtype=np.uint32)
    vc = np.zeros((DQ * 4, T4), dtype=np.int16)
    ksum = np.zeros(T4, dtype=np.int32)
    # per token (queries in the first row, keys in the second) scales, code multipliers, max / sum
    sc = np.zeros((2, TP), dtype=np.float32)
    inv = np.zeros((2, TP), dtype=np.float32)
    m = np.empty(TP, dtype=np.float32)
    total = np.empty(TP, dtype=np.float32)
    ibits = np.empty(TP, dtype=np.int32)
    ones = np.zeros(DQ * 4, dtype=np.float32)
    ones[:D] = _ONE
    acc = np.empty(RB * _TQ, dtype=np.int32)
    return s, pw, qw, kw, vc, ksum, sc, inv, m, total, ibits, ones, acc


@helper
def _pack_keys(kf, D, T, T4, DQ, ones, sc, inv, kw, ksum):
    # K's signed codes as words kw[q * T4 + j] (features 4q .. 4q + 3 of key j), keys past T code 0,
    # and ksum[j], each key's code sum: pack_quads' unsigned bytes with the top bit flipped.
    token_scales(kf, 0, D, T, 0, T, ones, sc[1:2], inv[1])
    pack_quads(kf, 0, D, T, 0, T, ones, inv[1], kw, np.uint64(0), T4, DQ, T)
    for q in range(DQ):
        row = kw[q * T4: q * T4 + T]
        for j in range(T):
            w = row[j]
            # the 4 unsigned bytes' sum (each code + 128), two bytes at a time, in int64 lanes
            x = np.int64(w & _EVEN) + np.int64((w >> np.uint32(8)) & _EVEN)
            ksum[j] += np.int32((x & 0xFFFF) + (x >> 16) - 512)
            row[j] = w ^ _FLIP


@helper
def _quantize_values(vf, D, T, vc, lanes):
    # V's rows quantized per feature over the sequence's keys into vc[d, :T] (int16 codes within
    # +-1023); returns the row scales sv (D,). The row max runs in 16 lanes (lanes: float32
    # scratch (16,)): a single running max is a serial dependency chain (fastmath here excludes
    # reassociation).
    sv = np.zeros(D, dtype=np.float32)
    for d in range(D):
        row = vf[d * T: (d + 1) * T]
        lanes[:] = _ZERO
        for j0 in range(0, T - 15, 16):
            for i in range(16):
                lanes[i] = max(lanes[i], abs(row[j0 + i]))
        amax = _ZERO
        for j in range(T - T % 16, T):
            amax = max(amax, abs(row[j]))
        for i in range(16):
            amax = max(amax, lanes[i])
        sv[d] = amax / _V_MAX
        r = _V_MAX / amax if amax > _ZERO else _ZERO
        out = vc[d]
        for j in range(T):
            out[j] = np.int32(np.rint(row[j] * r))
    return sv


@kernel
def one_head_int8(qkv, key_bias, b, h, heads, scale, ctx, buffers):
    # ctx[b, hD:(h+1)D] for one (sequence, head), in int8 (module docstring); buffers: `scratch`.
    s, pw, qw, kw, vc, ksum, sc, inv, m, total, ibits, ones, acc = buffers
    T = qkv.shape[2]
    H = qkv.shape[1] // 3
    D = H // heads
    T4, TP = s.shape
    DQ = qw.shape[0] // TP
    JQ = T4 // 4
    base = qkv[b].reshape(-1)
    qf = base[h * D * T: (h + 1) * D * T]
    kf = base[(H + h * D) * T: (H + (h + 1) * D) * T]
    vf = base[(2 * H + h * D) * T: (2 * H + (h + 1) * D) * T]
    # Q: unsigned codes per query, quads x TP words (padding queries: code 0, scale 0)
    token_scales(qf, 0, D, T, 0, T, ones, sc[0:1], inv[0])
    pack_quads(qf, 0, D, T, 0, T, ones, inv[0], qw, np.uint64(0), TP, DQ, TP)
    ksum[:] = 0
    _pack_keys(kf, D, T, T4, DQ, ones, sc, inv, kw, ksum)
    sv = _quantize_values(vf, D, T, vc, total[:16])
    # scores, key-major: rows j < T of s (TP queries each), and the running max per query
    kb = key_bias[b]
    sq = sc[0]
    for r in range(TP):
        m[r] = _NEG_INF
        total[r] = _ZERO
    xb = qw.view(np.uint8)
    for nb in range(JQ):
        for t in range(TP // _TQ):
            block_vnni_strided(xb, t * _TQ * 4, TP * 4, kw, nb * RB, T4, 1, DQ, acc)
            for i in range(min(RB, T - nb * RB)):
                j = nb * RB + i
                comp = ksum[j] * np.int32(128)
                f = scale * sc[1, j]
                bj = kb[j]
                row = s[j]
                a = acc[i * _TQ: (i + 1) * _TQ]
                for c in range(_TQ):
                    r = t * _TQ + c
                    val = np.float32(a[c] - comp) * (f * sq[r]) + bj
                    row[r] = val
                    m[r] = max(m[r], val)
    # softmax exps, then their codes 2 keys to a word (int16 pairs; keys past T: code 0)
    for j in range(T):
        exp_shifted(s[j], m, ibits)
    for j in range(T, T4):
        s[j, :] = _ZERO
    JP = T4 // 2
    for q in range(JP):
        r0, r1 = s[2 * q], s[2 * q + 1]
        out = pw[q * TP: (q + 1) * TP]
        for r in range(TP):
            c0 = np.uint32(r0[r] * _P_MAX + _HALF)
            c1 = np.uint32(r1[r] * _P_MAX + _HALF)
            out[r] = c0 | (c1 << 16)
            total[r] += np.float32(c0 + c1)
    for r in range(TP):
        total[r] = _ONE / total[r]
    # context: V codes (rows d) x P codes, 4 feature rows x 64 queries per tile, pairs of keys
    vw = vc.reshape(-1).view(np.uint32)
    pb = pw.view(np.uint8)
    out = ctx[b, h * D: (h + 1) * D]
    for db in range(DQ):
        for t in range(TP // _TQ):
            block_vnni16_strided(pb, t * _TQ * 4, TP * 4, vw, db * RB * JP, 1, JP, JP, acc)
            for i in range(min(RB, D - db * RB)):
                d = db * RB + i
                f = sv[d]
                o = out[d]
                a = acc[i * _TQ: (i + 1) * _TQ]
                for c in range(min(_TQ, T - t * _TQ)):
                    r = t * _TQ + c
                    o[r] = np.float32(a[c]) * (f * total[r])


@kernel
def sequence_heads_int8(qkv, key_bias, heads, scale, ctx):
    # Every head of one sequence, serially: qkv (1, 3H, T), key_bias (1, T), ctx (1, H, T); for the
    # fused whole-layer kernel, whose tasks are sequences (kernels/ffn_int8.py).
    buffers = scratch(qkv.shape[2], qkv.shape[1] // 3 // heads)
    for h in range(heads):
        one_head_int8(qkv, key_bias, 0, h, heads, scale, ctx, buffers)


@parallel_kernel
def attention_int8(qkv, key_bias, heads, scale, ctx):
    # One task per (sequence, head), as attention.attention.
    B, H3, T = qkv.shape
    D = H3 // 3 // heads
    for i in prange(B * heads):
        b = i // heads
        one_head_int8(qkv, key_bias, b, i - b * heads, heads, scale, ctx, scratch(T, D))
