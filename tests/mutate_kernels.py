"""Mutation check of the kernel conformance suite: does a deliberate bug in each kernel path fail
a test? Not collected by pytest; run it before trusting a new kernel path:

    .venv/bin/python tests/mutate_kernels.py                 # every mutation, ~2-5 min each
    .venv/bin/python tests/mutate_kernels.py tail_drops_last_column
    .venv/bin/python tests/mutate_kernels.py --int8          # the int8 / VNNI / AMX mutations only

Each mutation is applied to a private copy of the checkout (never to the working tree), the
generated kernels are regenerated there, and the mutation's test files run against the copy with
an empty Numba cache, stopping at the first failure. A mutation that passes is a hole in the suite.
First the unmutated copy runs every test file the chosen mutations use, and must pass: otherwise
an already failing test would read as "caught".
Recorded 2026-12-02: every FP32 mutation below fails at least one test; the packed-panel one fails
only the real-shape cases (test_real_layer_shapes_packed_panels). The int8 mutations need a CPU with
AVX512-VNNI (and AMX-INT8 for the amx one); elsewhere their tests skip and they read NOT CAUGHT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FP32_TESTS = ("tests/test_kernels.py",)
INT8_TESTS = ("tests/test_int8_kernels.py",)
FFN_TESTS = ("tests/test_ffn_fused.py",)
FFN8_TESTS = ("tests/test_ffn_int8.py",)
ATTENTION_TESTS = ("tests/test_attention.py",)
ATTN8_TESTS = ("tests/test_attention_int8.py",)
# name -> (file under kernels/, text, replacement[, test files]); test files default to FP32_TESTS
MUTATIONS = {
    "packed_panel_drops_last_row": (
        "gen_spmm.py", "pack_panel(xf, xoff0 + np.uint64(col), S, K, {TM}, panel)",
        "pack_panel(xf, xoff0 + np.uint64(col), S, K - 1, {TM}, panel)"),
    "in_place_reads_next_row": (
        "gen_spmm.py", "                if pack:\n",
        "                if not pack:\n                    soff = soff + us\n                if pack:\n"),
    "tail_drops_last_column": (
        "gen_spmm.py", "width = min({W}, S - col)", "width = min({W}, S - col) - 1"),
    "short_sequences_drop_last_of_group": (
        "spmm_epilogue.py", "    for i in range(nb):\n        src = np.uint64((b0 + i) * K * S)",
        "    for i in range(max(nb - 1, 1)):\n        src = np.uint64((b0 + i) * K * S)"),
    "tile_drops_last_entry_of_run": (
        "gen_spmm.py", 'L.append("    for p in range(start, end):")',
        'L.append("    for p in range(start, max(start, end - np.uint64(1))):")'),
    "epilogue_skips_last_sequence_of_group": (
        "gen_spmm.py", "                for i in range(nb):\n                    so = ",
        "                for i in range(max(nb - 1, 1)):\n                    so = "),
    # The fused FFN (kernels/ffn_fused.py), checked by tests/test_ffn_fused.py.
    "ffn_partial_tile_drops_last_column": (
        "ffn_fused.py", "copy_row(panel, np.uint64(n * tw), yf, off, uw)",
        "copy_row(panel, np.uint64(n * tw), yf, off, np.uint64(max(width - 1, 1)))", FFN_TESTS),
    "ffn_second_matmul_skips_last_chunk": (
        "ffn_fused.py", "_product(panel, f, d2, i2, p2, kc2, r2, tw)",
        "_product(panel, f, d2, i2, p2[:max(p2.shape[0] - 1, 1)], kc2, r2, tw)", FFN_TESTS),
    "ffn_intermediate_without_bias": (
        "ffn_fused.py", "epilogue_inplace(f, np.uint64(n * tw), ut, b1[n], act,",
        "epilogue_inplace(f, np.uint64(n * tw), ut, np.float32(0), act,", FFN_TESTS),
    "ffn_4x1_drops_last_block_of_run": (
        "ffn_fused.py", "ut, d, i,\n                              start, end)\n            elif",
        "ut, d, i,\n                              start, max(start, end - np.uint64(1)))\n            elif",
        FFN_TESTS),
    "ffn_4x1_avx2_second_half_reads_first": (
        "ffn_fused.py", "_tile_bsr4x1_w32(out, yoff + half, ut, src, xoff + half, ut, d, i, start, end)",
        "_tile_bsr4x1_w32(out, yoff + half, ut, src, xoff, ut, d, i, start, end)", FFN_TESTS),
    # The 128-token tile of the fused kernels. Its tests run everywhere (off AVX-512 on the 64-token
    # tile twice), but the 128-token zmm CSR tile runs on AVX-512 hosts only: elsewhere the first
    # of these reads NOT CAUGHT.
    "ffn_wide_csr_tile_row_stride": (
        "ffn_fused.py", "_tile_csr_128(out, np.uint64(n * tw), ut, src, xoff, ut,",
        "_tile_csr_128(out, np.uint64(n * tw), ut, src, xoff, np.uint64(64),", FFN_TESTS),
    "ffn_wide_4x1_skips_second_half": (
        "ffn_fused.py", "for q in range(tw // 64):  # 64 tokens a pass",
        "for q in range(max(tw // 64 - 1, 1)):  # 64 tokens a pass", FFN_TESTS),
    "ffn_wide_norm_first_64_columns_only": (
        "ffn_fused.py", "for j0 in range(0, width, 64):", "for j0 in range(0, min(width, 64), 64):", FFN_TESTS),
    "ffn_layer_norm_skipped": (
        "ffn_fused.py", "    if has_norm:  # the tile", "    if has_norm and S < 0:  # the tile", FFN_TESTS),
    "ffn_tail_drops_attention_residual": (
        "ffn_fused.py", "b0[n], 0, rf, base + np.uint64(n) * us, True)", "b0[n], 0, rf, base + np.uint64(n) * us, False)",
        FFN_TESTS),
    # Attention (kernels/attention.py), checked by tests/test_attention.py.
    "attention_max_skips_key_bias": (
        "attention.py", "            val = row[r] * scale + bj\n", "            val = row[r] * scale\n",
        ATTENTION_TESTS),
    "attention_normalises_one_query_short": (
        "attention.py", "    for d in range(D):\n        o = out[d]\n        for r in range(T):",
        "    for d in range(D):\n        o = out[d]\n        for r in range(T - 1):", ATTENTION_TESTS),
    "block_values_transposed": (
        "gen_spmm.py", "w{r}_{c} = data[q + {u}({r * C + c})]", "w{r}_{c} = data[q + {u}({c * R + r})]"),
    "gelu_before_bias": (
        "spmm_epilogue.py", "y[off + j] = gelu_f32(y[off + j] + bias)",
        "y[off + j] = gelu_f32(y[off + j]) + bias"),
    # The explicit 512-bit tiles (kernels/spmm_zmm.py) CSR and 4x1 run on AVX-512 hosts (both
    # caught by test_kernels.py on Sapphire Rapids, 2026-12-03, as was ffn_tail_drops_attention_residual
    # by test_ffn_fused.py; on AVX2 hosts the zmm tiles do not run and these two read NOT CAUGHT).
    "zmm_tile_drops_odd_last_entry": (
        "spmm_zmm.py", "            if sets > 1:\n", "            if sets > 9:\n"),
    "zmm_tile_skips_last_row_of_block": (
        "spmm_zmm.py", "                        for r in range(R):\n                            a = accs",
        "                        for r in range(max(R - 1, 1)):\n                            a = accs"),
    "int8_gemm_vnni_drops_last_quad": (
        "int8_gemm.py", "wf, nb * KQ * RB, KQ, acc)", "wf, nb * KQ * RB, KQ - 1, acc)", INT8_TESTS),
    "int8_amx_drops_last_k_step": (
        "int8_gemm.py", "16 * SP * 4, KB, acc, s0, SP)", "16 * SP * 4, KB - 1, acc, s0, SP)", INT8_TESTS),
    "int8_amx_lower_tiles_overlap": (
        "int8_gemm.py", "lower = builder.gep(base, [builder.mul(row, c64(16))])",
        "lower = builder.gep(base, [builder.mul(row, c64(15))])", INT8_TESTS),
    "int8_dequant_wrong_offset": (
        "int8_gemm.py", "comp = rowsum[n] * _OFFSET", "comp = rowsum[n] * (_OFFSET - 1)", INT8_TESTS),
    "int8_bsr1x4_drops_last_block_of_run": (
        "int8_bsr.py", "_tile_1x128(xf, x_off, SP * 4, wq, gidx, s, e, acc",
        "_tile_1x128(xf, x_off, SP * 4, wq, gidx, s, e - 1, acc", INT8_TESTS),
    "int8_bsr4x4_drops_last_row_of_task": (
        "int8_bsr.py", "(m1 - m0) * 4, m0 * 4", "(m1 - m0) * 4 - 1, m0 * 4", INT8_TESTS),
    "int8_vnni_only_first_k_chunk": (
        "int8_vnni.py", "    for c in range(ptr.shape[0]):", "    for c in range(min(1, ptr.shape[0])):",
        INT8_TESTS),
    "int8_pack_swaps_quad_bytes": (
        "int8_vnni.py", "(_code_byte(xf[o3 + j], m3, r) << 24)", "(_code_byte(xf[o3 + j], m3, r) << 16)",
        INT8_TESTS),
    # The fused int8 layer tail (kernels/ffn_int8.py), checked by tests/test_ffn_int8.py.
    "ffn8_bsr_skips_last_chunk": (
        "ffn_int8.py", "        for c in range(p.shape[0]):", "        for c in range(max(p.shape[0] - 1, 1)):",
        FFN8_TESTS),
    "ffn8_gemm_drops_last_row_block": (
        "ffn_int8.py", "for nb in range(n0 // RB, (n1 + RB - 1) // RB):",
        "for nb in range(n0 // RB, max(n0 // RB + 1, (n1 + RB - 1) // RB - 1)):", FFN8_TESTS),
    "ffn8_intermediate_codes_pad_wrong": (
        "ffn_int8.py", "np.uint64(0), W, KQ, W)", "np.uint64(0), W, KQ - 1, W)", FFN8_TESTS),
    "ffn8_tail_residual_skipped": (
        "ffn_int8.py", "_linear(k0, w0, g0, p0, cq0, rs0, ws0, b0, 0, xq, xs, width, res, W, 0, out, True, acc, W)",
        "_linear(k0, w0, g0, p0, cq0, rs0, ws0, b0, 0, xq, xs, width, res, W, 0, out, False, acc, W)", FFN8_TESTS),
    "ffn8_partial_tile_writes_one_column_short": (
        "ffn_int8.py", "    us, uw, ut = np.uint64(S), np.uint64(width), np.uint64(W)\n    for n in range(np",
        "    us, uw, ut = np.uint64(S), np.uint64(max(width - 1, 1)), np.uint64(W)\n    for n in range(np",
        FFN8_TESTS),
    "layer8_attention_ignores_padding": (
        "ffn_int8.py", "sequence_heads(qkv, key_bias[b:b + 1],", "sequence_heads(qkv, key_bias[:1] * 0,", FFN8_TESTS),
    "layer8_bsr128_drops_last_block_of_run": (
        "ffn_int8.py", "_tile_1x128(xq, c * cq * qb, qb, w, g, s, e, acc", "_tile_1x128(xq, c * cq * qb, qb, w, g, s, e - 1, acc",
        FFN8_TESTS),
    "layer8_gemm_second_half_skipped": (
        "ffn_int8.py", "            for half in range(W // 64):", "            for half in range(1):", FFN8_TESTS),
    "layer8_qkv_last_tile_at_first_columns": (
        "ffn_int8.py", "xq, xs, width, qf, S, s0, qf, False, acc, W)", "xq, xs, width, qf, S, 0, qf, False, acc, W)",
        FFN8_TESTS),
    "layer8_int8_attention_ignores_padding": (
        "ffn_int8.py", "sequence_heads_int8(qkv, key_bias[b:b + 1],", "sequence_heads_int8(qkv, key_bias[:1] * 0,",
        FFN8_TESTS),
    # The unstructured gather kind (kernels/int8_gather.py) and its fused use.
    "gather_drops_last_quad_of_row": (
        "int8_gather.py", "idx, wq, ptr[n], ptr[n + 1], acc, (n - n0) * TOKENS)",
        "idx, wq, ptr[n], ptr[n + 1] - 1, acc, (n - n0) * TOKENS)", INT8_TESTS),
    "gather_token_order_swapped": (
        "int8_gather.py", "outs = [sh(a01, a23, first), sh(a01, a23, second),",
        "outs = [sh(a01, a23, second), sh(a01, a23, first),", INT8_TESTS),
    "gather_padding_codes_nonzero": (
        "int8_gather.py", "    vals = np.zeros(4 * int(ptr[-1]), dtype=np.int8)",
        "    vals = np.ones(4 * int(ptr[-1]), dtype=np.int8)", INT8_TESTS),
    "layer8_gather_second_half_skipped": (
        "ffn_int8.py", "                for h in range(W // 64):", "                for h in range(1):", FFN8_TESTS),
    # Int8 attention (kernels/attention_int8.py), checked by tests/test_attention_int8.py.
    "attn8_wrong_key_compensation": (
        "attention_int8.py", "comp = ksum[j] * np.int32(128)", "comp = ksum[j] * np.int32(127)", ATTN8_TESTS),
    "attn8_skips_last_key_pair_of_values": (
        "attention_int8.py", "vw, db * RB * JP, 1, JP, JP, acc)", "vw, db * RB * JP, 1, JP, JP - 1, acc)",
        ATTN8_TESTS),
    "attn8_truncates_probability_codes": (
        "attention_int8.py", "c1 = np.uint32(r1[r] * _P_MAX + _HALF)", "c1 = np.uint32(r1[r] * _P_MAX)",
        ATTN8_TESTS),
    "attn8_padding_keys_counted": (
        "attention_int8.py", "    for j in range(T, T4):\n        s[j, :] = _ZERO",
        "    for j in range(T, T4):\n        s[j, :] = _ONE", ATTN8_TESTS),
}


def copy_checkout(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "bench-models", "bench-results", "__pycache__",
                                    "*.egg-info", "data-cache", "train-runs")
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)
    # The editable install maps sparsebert.kernels to kernels/; in the copy, a link does it.
    (dst / "sparsebert" / "kernels").symlink_to(dst / "kernels", target_is_directory=True)


def tests_of(name: str) -> tuple:
    spec = MUTATIONS[name]
    return spec[3] if len(spec) > 3 else FP32_TESTS


def pytest_in(work: Path, tests) -> tuple:
    """Run `tests` in the copy with an empty Numba cache: (FAILED test ids, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(work), NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix="mutate-numba-"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                          cwd=work, env=env, capture_output=True, text=True)
    failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if proc.returncode not in (0, 1) and not failed:
        failed = [f"pytest exit status {proc.returncode} (a crash counts as caught)"]
    return failed, time.perf_counter() - t0


def run(name: str, work: Path) -> str:
    fname, old, new = MUTATIONS[name][:3]
    path = work / "kernels" / fname
    pristine = path.read_text()
    generated = (work / "kernels" / "_spmm_generated.py").read_text()
    if pristine.count(old) != 1:
        return f"{name}: mutation no longer applies (the code changed); update it"
    try:
        path.write_text(pristine.replace(old, new))
        subprocess.run([sys.executable, str(work / "kernels" / "gen_spmm.py")], check=True,
                       capture_output=True)
        failed, seconds = pytest_in(work, tests_of(name))
        verdict = f"caught by {failed[0]}" if failed else "NOT CAUGHT: the suite has a hole"
        return f"{name}: {verdict} ({seconds:.0f} s)"
    finally:
        path.write_text(pristine)
        (work / "kernels" / "_spmm_generated.py").write_text(generated)


def main(argv: list[str]) -> int:
    if argv == ["--int8"]:
        argv = [n for n in MUTATIONS if tests_of(n) in (INT8_TESTS, FFN8_TESTS, ATTN8_TESTS)]
    names = argv or list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        print(f"unknown mutation(s) {unknown}; choose from {list(MUTATIONS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sparsebert-mutate-") as tmp:
        work = Path(tmp) / "checkout"
        copy_checkout(work)
        baseline = sorted({t for n in names for t in tests_of(n)})
        failed, seconds = pytest_in(work, baseline)
        if failed:
            print(f"the unmutated suite fails ({failed[0]}): fix it first, or every mutation reads "
                  "as caught", file=sys.stderr)
            return 1
        print(f"unmutated {' '.join(baseline)}: pass ({seconds:.0f} s)", flush=True)
        results = []
        for n in names:
            results.append(run(n, work))
            print(results[-1], flush=True)
    return 0 if all("NOT CAUGHT" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
