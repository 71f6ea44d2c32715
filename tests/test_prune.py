"""sparsebert.prune against independent references: exact zero counts per scope and block shape,
transformers' BertModel on the pruned folder (and on a torch model with layers deleted and pruned
by a torch implementation), the dense path of sparsebert, and an ONNX Runtime run of its export."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models"))

import sparsebert  # noqa: E402
from make_checkpoints import make_random_bert  # noqa: E402
from sparsebert.loaders import read_checkpoint  # noqa: E402
from sparsebert.prune import encoder_linear_names, prune_checkpoint, prune_weights  # noqa: E402

LAYERS = 4
SHAPE = dict(hidden=32, layers=LAYERS, heads=4, intermediate=64, vocab=100, max_position=64)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_random_bert(tmp_path_factory.mktemp("src") / "bert", seed=3, **SHAPE)


def _inputs(B=3, T=12, vocab=100, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(B, T))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, 8:] = 0  # padding in one row
    mask[2, 5:] = 0
    types = np.zeros((B, T), dtype=np.int64)
    types[:, T // 2:] = 1
    return ids, mask, types


def _torch_out(model, ids, mask, types):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types))
    return out.last_hidden_state.numpy()


def _linears(path):
    sd = read_checkpoint(path).state_dict
    return {n: np.asarray(sd[n]) for n in encoder_linear_names(sd)}


def _max_diff_valid(a, b, mask):
    keep = mask.astype(bool)
    return float(np.abs(a[keep] - b[keep]).max())


# ----------------------------------------------------------------------------- zero counts


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95])
def test_per_layer_unstructured_hits_target_in_every_linear(src, tmp_path, sparsity):
    out = prune_checkpoint(src, tmp_path / "p", sparsity=sparsity)
    weights = _linears(tmp_path / "p")
    assert len(weights) == 6 * LAYERS
    for name, w in weights.items():
        zeros = w.size - np.count_nonzero(w)
        assert zeros == round(sparsity * w.size), name
    assert out["encoder_linear_sparsity"] == pytest.approx(sparsity, abs=1e-3)


def test_pruning_zeroes_the_smallest_magnitudes(src, tmp_path):
    prune_checkpoint(src, tmp_path / "p", sparsity=0.7)
    before, after = _linears(src), _linears(tmp_path / "p")
    for name, w in before.items():
        kept = after[name] != 0
        np.testing.assert_array_equal(after[name][kept], w[kept])
        assert np.abs(w[~kept]).max() <= np.abs(w[kept]).min(), name


def test_global_scope_hits_target_overall_not_per_linear(src, tmp_path):
    prune_checkpoint(src, tmp_path / "g", sparsity=0.8, scope="global")
    weights = _linears(tmp_path / "g")
    total = sum(w.size for w in weights.values())
    zeros = sum(w.size - np.count_nonzero(w) for w in weights.values())
    assert zeros == round(0.8 * total)
    per = [1 - np.count_nonzero(w) / w.size for w in weights.values()]
    assert max(per) - min(per) > 0.01  # one threshold, not one target per linear
    # One threshold: every kept weight is at least as large as every pruned one, across linears.
    src_w = _linears(src)
    kept_min = min(np.abs(src_w[n][weights[n] != 0]).min() for n in weights)
    cut_max = max(np.abs(src_w[n][weights[n] == 0]).max() for n in weights)
    assert cut_max <= kept_min


@pytest.mark.parametrize("block", ["4x1", "8x1", "2x2", "1x4"])
@pytest.mark.parametrize("scope", ["per-layer", "global"])
def test_block_pruning_zeroes_only_full_aligned_blocks(src, tmp_path, block, scope):
    R, C = (int(v) for v in block.split("x"))
    prune_checkpoint(src, tmp_path / "b", sparsity=0.9, block=block, scope=scope)
    weights = _linears(tmp_path / "b")
    zero_blocks = all_blocks = 0
    for name, w in weights.items():
        N, K = w.shape
        nz = (w != 0).reshape(N // R, R, K // C, C).transpose(0, 2, 1, 3).reshape(N // R, K // C, R * C)
        # Every aligned block is all zero or all nonzero (source weights have no exact zeros).
        assert np.all(nz.all(axis=2) | ~nz.any(axis=2)), name
        n_zero = int((~nz.any(axis=2)).sum())
        if scope == "per-layer":
            assert n_zero == round(0.9 * nz.shape[0] * nz.shape[1]), name
        zero_blocks += n_zero
        all_blocks += nz.shape[0] * nz.shape[1]
    if scope == "global":
        assert zero_blocks == round(0.9 * all_blocks)


def test_block_ranking_uses_the_l2_norm():
    w = np.array([[3.0, 0.1], [0.0, 0.1], [1.0, 1.0], [1.0, 1.0]], dtype=np.float32)  # 2x1 blocks
    # Block norms: col 0: 3.0, 1.414; col 1: 0.141, 1.414. Max-abs would keep (0, 0) and drop a
    # 1.0-block; L2 drops the smallest-norm block only.
    out = prune_weights({"w": w}, 0.25, block="2x1")["w"]
    np.testing.assert_array_equal(out, np.where([[1, 0], [1, 0], [1, 1], [1, 1]], w, 0))


# ----------------------------------------------------------------------------- references


def test_pruned_folder_matches_transformers_and_dense_path(src, tmp_path):
    from transformers import BertModel

    dst = tmp_path / "p90"
    prune_checkpoint(src, dst, sparsity=0.9)
    ids, mask, types = _inputs()
    ref = _torch_out(BertModel.from_pretrained(str(dst)).eval(), ids, mask, types)
    dense = sparsebert.load(dst, formats="dense")(ids, mask, types).last_hidden_state
    assert dense.shape == ref.shape and dense.dtype == np.float32
    assert _max_diff_valid(dense, ref, mask) <= 1e-4
    for fmt in ("auto", "csr"):
        got = sparsebert.load(dst, formats=fmt)(ids, mask, types).last_hidden_state
        assert _max_diff_valid(got, dense, mask) <= 1e-5, fmt


def test_block_pruned_sparse_formats_equal_dense(src, tmp_path):
    dst = tmp_path / "b4"
    prune_checkpoint(src, dst, sparsity=0.9, block="4x1")
    ids, mask, types = _inputs(seed=1)
    dense = sparsebert.load(dst, formats="dense")(ids, mask, types).last_hidden_state
    auto_model = sparsebert.load(dst, formats="auto")
    assert any(r["format"].startswith("bsr") for r in auto_model.sparsity_report()["linears"])
    for fmt in ("auto", "csr", "bsr4x1", "bsr"):
        got = sparsebert.load(dst, formats=fmt)(ids, mask, types).last_hidden_state
        assert _max_diff_valid(got, dense, mask) <= 1e-5, fmt


def _torch_prune_(model, sparsity):
    """Independent reference: zero the round(s * numel) smallest |w| of each encoder linear."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("encoder.layer.") and name.endswith(".weight") and p.dim() == 2:
                k = int(round(sparsity * p.numel()))
                if k:
                    thresh = p.abs().flatten().kthvalue(k).values
                    p.mul_((p.abs() > thresh).to(p.dtype))


def test_layer_dropping_matches_torch_with_layers_deleted(src, tmp_path):
    import torch
    from transformers import BertModel

    kept = [3, 0, 2]
    dst = tmp_path / "drop"
    out = prune_checkpoint(src, dst, sparsity=0.6, layers=kept)
    assert out["layers_kept"] == kept
    assert json.loads((dst / "config.json").read_text())["num_hidden_layers"] == 3

    ref_model = BertModel.from_pretrained(str(src)).eval()
    ref_model.encoder.layer = torch.nn.ModuleList([ref_model.encoder.layer[i] for i in kept])
    _torch_prune_(ref_model, 0.6)
    ids, mask, types = _inputs(seed=2)
    ref = _torch_out(ref_model, ids, mask, types)
    got = sparsebert.load(dst)(ids, mask, types).last_hidden_state
    assert _max_diff_valid(got, ref, mask) <= 1e-4
    hf = _torch_out(BertModel.from_pretrained(str(dst)).eval(), ids, mask, types)
    assert _max_diff_valid(hf, ref, mask) <= 1e-5


def test_pruned_folder_exports_to_onnx(src, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from export_onnx import export_bert_onnx

    dst = tmp_path / "p"
    prune_checkpoint(src, dst, sparsity=0.8, block="4x1")
    onnx_path = export_bert_onnx(dst, tmp_path / "onnx" / "model.onnx", "legacy17")
    ids, mask, types = _inputs(seed=4)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ref = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask,
                                           "token_type_ids": types})[0]
    got = sparsebert.load(dst)(ids, mask, types).last_hidden_state
    assert _max_diff_valid(got, ref, mask) <= 1e-4
    # The ONNX export itself reads back in sparsebert with its zeros intact.
    report = sparsebert.load(onnx_path).sparsity_report()["total"]
    assert report["sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_task_head_names_and_tokenizer_files_survive(tmp_path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    src = tmp_path / "cls"
    model.save_pretrained(str(src))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (src / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (src / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (src / "modules.json").write_text("[]")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))

    dst = tmp_path / "cls-pruned"
    out = prune_checkpoint(src, dst, sparsity=0.5, layers=[1])
    assert set(out["copied"]) == {"vocab.txt", "tokenizer_config.json", "modules.json", "1_Pooling/"}
    assert (dst / "1_Pooling" / "config.json").is_file()
    sd = read_checkpoint(dst).state_dict
    assert "classifier.weight" in sd and all(n.startswith(("bert.", "classifier.")) for n in sd)
    assert "bert.encoder.layer.0.attention.self.query.weight" in sd
    config = json.loads((dst / "config.json").read_text())
    assert len(config["id2label"]) == 3
    assert config["num_hidden_layers"] == 1

    reloaded = BertForSequenceClassification.from_pretrained(str(dst)).eval()
    torch.testing.assert_close(reloaded.classifier.weight, model.classifier.weight)
    np.testing.assert_array_equal(
        reloaded.bert.encoder.layer[0].output.dense.bias.detach().numpy(),
        model.bert.encoder.layer[1].output.dense.bias.detach().numpy(),
    )
    assert sparsebert.load(dst).tokenizer is not None


# ----------------------------------------------------------------------------- refusals


def test_refuses_source_as_destination_and_non_empty_destination(src, tmp_path):
    with pytest.raises(ValueError, match="is the source"):
        prune_checkpoint(src, src, sparsity=0.5)
    dst = tmp_path / "d"
    prune_checkpoint(src, dst, sparsity=0.5)
    with pytest.raises(ValueError, match="not empty"):
        prune_checkpoint(src, dst, sparsity=0.6)
    prune_checkpoint(src, dst, sparsity=0.6, overwrite=True)
    w = _linears(dst)["encoder.layer.0.output.dense.weight"]
    assert w.size - np.count_nonzero(w) == round(0.6 * w.size)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), r"\[0, 1\)"),
    (dict(sparsity=-0.1), r"\[0, 1\)"),
    (dict(sparsity=True), "number"),
    (dict(sparsity=0.5, block="4x"), "4x1"),
    (dict(sparsity=0.5, block="3x1"), "does not divide"),
    (dict(sparsity=0.5, block="0x1"), "positive"),
    (dict(sparsity=0.5, scope="layer"), "scope"),
    (dict(sparsity=0.5, layers=[0, 9]), "out of range"),
    (dict(sparsity=0.5, layers=[1, 1]), "repeats"),
])
def test_bad_arguments_raise_value_error(src, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_checkpoint(src, tmp_path / "x", **kwargs)
