"""One BERT-base linear, int8 and fp32, every engine in one process: where sparsebert's int8 stands.

Times Y (N, T) = W (N, K) @ X (K, T) for T = B x S tokens on one thread (run it under
`taskset -c 0 env NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1`), engines interleaved call by call,
median milliseconds over --reps calls each:

- numpy-fp32: numpy's sgemm on the same (N, K) @ (K, T) (the fp32 roofline most users see);
- sb-int8-vnni: sparsebert's current `Int8Linear` format "vnni" (quantize + pack + kernel +
  epilogue), and its kernel alone (`spmm_int8_vnni` on packed codes);
- sb-gemm-vnni / sb-gemm-amx: kernels/int8_gemm.py (register-blocked vpdpbusd; AMX tdpbsud), kernel
  alone (integer sums + dequantize + bias) on pre-packed activations;
- sb-bsr1x4-{80,90}, sb-bsr4x4-{80,90}: kernels/int8_bsr.py, 1x4 blocks (1 row x 1 K-quad) and
  4x4 blocks (4 rows x 1 K-quad) at 80% / 90% block sparsity (magnitude-pruned), kernel alone;
- sb-linear-{gemm,amx,bsr1x4-80,bsr1x4-90}: the whole `Int8Linear` call of those kinds (quantize
  + pack the float activations, kernel, epilogue): compare with ort-dynamic;
- ort-matmulinteger: ONNX Runtime, one MatMulInteger node (uint8 A (T, K), int8 B (K, N)),
  integer sums only; ort-dynamic: a `quantize_dynamic`'d one-MatMul model (quantize + int8 matmul +
  dequantize), both with intra_op_num_threads=1.

Also reports whether ONNX Runtime asked Linux for AMX tile state (arch_prctl ARCH_GET_XCOMP_PERM
bit 18 before / after its first run): MLAS requests it only when it dispatches its AMX kernels.

    flock /tmp/core0-timing.lock taskset -c 0 env NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/bench_int8_gemm.py --batch 8 --json bench-results/int8_gemm.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {"ffn_in": (3072, 768), "ffn_out": (768, 3072)}


def xcomp_perm() -> int:
    """Linux arch_prctl(ARCH_GET_XCOMP_PERM): the bitmask of XSAVE features this process may use."""
    libc = ctypes.CDLL(None, use_errno=True)
    mask = ctypes.c_uint64(0)
    rc = libc.syscall(158, 0x1022, ctypes.byref(mask))
    return int(mask.value) if rc == 0 else -1


def ort_engines(N, K, T, w_codes, xq_u8, w_float, x_float, tmp):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zp", "b_zp"], ["Y"])
    g = helper.make_graph([node], "mmi", [helper.make_tensor_value_info("A", TensorProto.UINT8, [T, K])],
                          [helper.make_tensor_value_info("Y", TensorProto.INT32, [T, N])],
                          [numpy_helper.from_array(np.ascontiguousarray(w_codes.T), "B"),
                           numpy_helper.from_array(np.array(128, np.uint8), "a_zp"),
                           numpy_helper.from_array(np.array(0, np.int8), "b_zp")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    p = Path(tmp) / "mmi.onnx"
    onnx.save(m, p)
    s1 = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    a = np.ascontiguousarray(xq_u8)
    node = helper.make_node("MatMul", ["X", "W"], ["Y"])
    g = helper.make_graph([node], "mm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, K])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, N])],
                          [numpy_helper.from_array(np.ascontiguousarray(w_float.T), "W")])
    pf = Path(tmp) / "mm.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), pf)
    pq = Path(tmp) / "mm_int8.onnx"
    quantize_dynamic(str(pf), str(pq), weight_type=QuantType.QInt8, per_channel=True)
    s2 = ort.InferenceSession(str(pq), opts, providers=["CPUExecutionProvider"])
    xt = np.ascontiguousarray(x_float.T)
    return {"ort-matmulinteger": (lambda: s1.run(None, {"A": a})[0]),
            "ort-dynamic": (lambda: s2.run(None, {"X": xt})[0])}


def bench(batch=8, seq=128, reps=9, engines=None, log=print) -> dict:
    from sparsebert.kernels import int8_vnni as kv
    from sparsebert.quant import Int8Linear
    from sparsebert.tuning import cpu_model

    rng = np.random.default_rng(0)
    out = {"cpu": cpu_model(), "batch": batch, "seq": seq, "tokens": batch * seq, "reps": reps,
           "shapes": {}}
    perm0 = xcomp_perm()
    for name, (N, K) in SHAPES.items():
        T = batch * seq
        w = rng.standard_normal((N, K)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        x = rng.standard_normal((batch, K, seq)).astype(np.float32)
        lin = Int8Linear.from_float(w, bias, "vnni")
        y = np.empty((batch, N, seq), np.float32)
        xp = np.empty((batch, -(-K // 4), -(-seq // kv.TILE) * kv.TILE, 4), np.uint8)
        xs = np.empty((batch, seq), np.float32)
        kv.quantize_pack(x, lin.smooth, xp, xs)
        rows = 16
        no_res = np.zeros((1, 1, 1), np.float32)
        xflat = np.ascontiguousarray(x.transpose(1, 0, 2).reshape(K, T))
        xq_u8 = (xp[:, :, :seq].transpose(0, 2, 1, 3).reshape(T, -1)[:, :K]).copy()  # (T, K) code+128
        fns = {
            "numpy-fp32": lambda: w @ xflat,
            "sb-int8-vnni": lambda: lin(x, out=y),
            "sb-int8-vnni-kernel": lambda: kv.spmm_int8_vnni(
                lin.quads, lin.quad_index, lin.indptr, lin.chunk_quads, lin.rowsum, xp, seq, lin.scale,
                xs, lin.bias, 0, no_res, False, rows, y),
        }
        fns.update(new_engines(lin, x, xp, xs, seq, y, w, bias, rng))
        with tempfile.TemporaryDirectory() as tmp:
            fns.update(ort_engines(N, K, T, lin.to_codes(), xq_u8, w, xflat, tmp))
            if engines:
                fns = {k: v for k, v in fns.items() if k in engines}
            for f in fns.values():  # compile / warm
                f()
            times = {k: [] for k in fns}
            for _ in range(reps):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        gmacs = {k: N * K * T / (v / 1000) / 1e9 for k, v in ms.items()}
        out["shapes"][name] = {"N": N, "K": K, "ms": ms, "gmac_per_s": gmacs}
        for k in ms:
            log(f"{name} N={N} K={K} T={T}: {k:22s} {ms[k]:8.2f} ms  {gmacs[k]:7.1f} GMAC/s")
    out["xcomp_perm_before"], out["xcomp_perm_after"] = perm0, xcomp_perm()
    out["amx_tile_permission_after_runs"] = bool(out["xcomp_perm_after"] >> 18 & 1)
    log(f"XCOMP_PERM before {perm0:#x}, after {out['xcomp_perm_after']:#x} (bit 18 = AMX tile data)")
    return out


def new_engines(lin, x, xp, xs, seq, y, w, bias, rng) -> dict:
    """Engines of the new kernels (kernels/int8_gemm.py, kernels/int8_bsr.py), when present."""
    fns = {}
    try:
        from sparsebert.kernels import int8_gemm as kg
    except ImportError:
        return fns
    codes = lin.to_codes()
    N, K = codes.shape
    wp = kg.pack_weight_vnni(codes)
    no_res = np.zeros((1, 1, 1), np.float32)
    from sparsebert.quant import Int8Linear

    for fmt in ("gemm", "amx") if kg.amx_available() else ("gemm",):
        full = Int8Linear(codes, lin.scale, bias, fmt)
        fns[f"sb-linear-{fmt}"] = lambda full=full: full(x, out=y)
    fns["sb-gemm-vnni"] = lambda: kg.gemm_int8_vnni(wp, lin.rowsum, xp, seq, lin.scale, xs, lin.bias,
                                                    0, no_res, False, y)
    if kg.amx_available():
        wa = kg.pack_weight_amx(codes)
        fns["sb-gemm-amx"] = lambda: kg.gemm_int8_amx(wa, lin.rowsum, xp, seq, lin.scale, xs, lin.bias,
                                                      0, no_res, False, y, kg.TILE_CONFIG)
    try:
        from sparsebert.kernels import int8_bsr as kb
    except ImportError:
        return fns
    quad = np.abs(w).reshape(N, K // 4, 4).sum(axis=2)
    for sp in (80, 90):
        keep = quad > np.quantile(quad, sp / 100)
        c = codes * np.repeat(keep, 4, axis=1)
        packed = kb.pack_bsr1x4(c)
        full = Int8Linear(c, lin.scale, bias, "bsr1x4")
        fns[f"sb-linear-bsr1x4-{sp}"] = lambda full=full: full(x, out=y)
        fns[f"sb-bsr1x4-{sp}"] = (lambda p=packed, c=c: kb.spmm_int8_bsr1x4(
            *p, xp, seq, lin.scale, xs, lin.bias, 0, no_res, False, y))
        qb = np.abs(w).reshape(N // 4, 4, K // 4, 4).sum(axis=(1, 3))  # 4 rows x 1 quad blocks
        keep4 = np.repeat(np.repeat(qb > np.quantile(qb, sp / 100), 4, axis=0), 4, axis=1)
        p4 = kb.pack_bsr4x4(codes * keep4)
        fns[f"sb-bsr4x4-{sp}"] = (lambda p=p4: kb.spmm_int8_bsr4x4(
            *p, xp, seq, lin.scale, xs, lin.bias, 0, no_res, False, y))
    return fns


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--engines", default=None, help="comma-separated subset")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    res = bench(a.batch, a.seq, a.reps, a.engines.split(",") if a.engines else None, log)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
