"""sparsebert on ONNX exports vs onnxruntime running the same file.

Every export flavour of models/export_onnx.py (torch legacy opset 14 and 17, dynamo with external
data, no token_type_ids input), a SparseML-style deployment folder, and the real MiniLM model.
"""

import shutil

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

import sparsebert  # noqa: E402
from conftest import TOLERANCE, assert_close_on_mask  # noqa: E402
from export_onnx import FLAVOURS, export_bert_onnx  # noqa: E402
from make_checkpoints import make_random_bert  # noqa: E402

TOL = TOLERANCE[np.float32]


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory):
    return make_random_bert(tmp_path_factory.mktemp("bert") / "hf", hidden=48, layers=3, heads=4,
                            intermediate=96, vocab=120, seed=7)


def ort_run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def inputs(vocab, with_types=True):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, vocab, size=(4, 13)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 3:] = 0
    types = rng.integers(0, 2, size=ids.shape).astype(np.int64) if with_types else np.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_export_flavours_match_onnxruntime(small_bert, tmp_path, flavour):
    onnx_path = export_bert_onnx(small_bert, tmp_path / f"{flavour}.onnx", flavour)
    feeds = inputs(120, with_types=flavour != "no_token_type")
    ref_hidden, ref_pooled = ort_run(onnx_path, feeds)
    ours = sparsebert.load(onnx_path)
    out = ours(feeds["input_ids"], feeds["attention_mask"],
               None if flavour == "no_token_type" else feeds["token_type_ids"])
    diff = assert_close_on_mask(out.last_hidden_state, ref_hidden, feeds["attention_mask"], TOL["hidden"])
    assert np.abs(out.pooler_output - ref_pooled).max() <= TOL["hidden"]
    print(f"{flavour}: max abs diff {diff:.2e}")


def test_deployment_folder(minilm_path, tmp_path):
    """SparseML / DeepSparse layout: model.onnx + config.json + tokenizer files in one folder."""
    folder = tmp_path / "deployment"
    folder.mkdir()
    export_bert_onnx(minilm_path, folder / "model.onnx", "legacy17")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "sentence_bert_config.json"):
        shutil.copy(f"{minilm_path}/{name}", folder / name)
    texts = ["The quick brown fox", "", "Deployment folders carry their own tokenizer."]
    from_onnx = sparsebert.load(folder)
    reference = sparsebert.load(minilm_path)
    batch = from_onnx.tokenize(texts)
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
             "token_type_ids": batch.token_type_ids}
    ref_hidden, _ = ort_run(folder / "model.onnx", feeds)
    out = from_onnx(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    diff = assert_close_on_mask(out.last_hidden_state, ref_hidden, batch.attention_mask, TOL["hidden"])
    print(f"MiniLM legacy17 vs onnxruntime: max abs diff {diff:.2e}")
    emb = from_onnx.encode(texts)
    np.testing.assert_allclose(emb, reference.encode(texts), atol=1e-6)


def test_bare_onnx_needs_tokenizer_argument_for_texts(small_bert, tmp_path, minilm_path):
    onnx_path = export_bert_onnx(small_bert, tmp_path / "bare" / "m.onnx", "legacy17")
    bare = sparsebert.load(onnx_path)
    with pytest.raises(sparsebert.CheckpointError, match="tokenizer"):
        bare.encode(["text"])
    ok = sparsebert.load(onnx_path, tokenizer=f"{minilm_path}/tokenizer.json")
    with pytest.raises(sparsebert.InputError, match="vocabulary"):
        ok.encode(["tokens beyond the tiny vocabulary of 120"])
