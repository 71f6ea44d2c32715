"""sparsebert vs Hugging Face transformers / sentence-transformers on the same weights.

The real all-MiniLM-L6-v2 model for encoder outputs and embeddings, small random configs for the
activation variants. Every comparison checks shape and dtype first, then values on non-padding
positions against TOLERANCE; `test_comparison_detects_a_broken_model` shows the check can fail.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import sparsebert  # noqa: E402
from conftest import TOLERANCE, assert_close_on_mask  # noqa: E402

TOL = TOLERANCE[np.float32]

TEXTS = [
    "The quick brown fox",
    "Sparse matrices make pruned transformers fast on ordinary CPUs, if the kernels exploit them.",
    "",
    "Ünïcödé, emoji 🙂 and punctuation!?",
    "short",
]
PAIRS = [("How old is the universe?", "About 13.8 billion years."), ("a", "b c d e f g")]


@pytest.fixture(scope="module")
def ours(minilm_path):
    return sparsebert.load(minilm_path)


@pytest.fixture(scope="module")
def hf(minilm_path):
    return transformers.BertModel.from_pretrained(minilm_path).eval()


def hf_forward(model, batch):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            token_type_ids=torch.from_numpy(batch.token_type_ids),
        )
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS], ids=["batch1", "batch5-padded"])
def test_encoder_outputs_match_transformers(ours, hf, texts):
    batch = ours.tokenize(texts)
    ref_hidden, ref_pooled = hf_forward(hf, batch)
    out = ours(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    assert_close_on_mask(out.last_hidden_state, ref_hidden, batch.attention_mask, TOL["hidden"])
    assert out.pooler_output.shape == ref_pooled.shape and out.pooler_output.dtype == np.float32
    assert np.abs(out.pooler_output - ref_pooled).max() <= TOL["hidden"]


def test_sentence_pairs_match_transformers(ours, hf):
    batch = ours.tokenize([a for a, _ in PAIRS], [b for _, b in PAIRS])
    assert batch.token_type_ids.max() == 1, "pairs must carry token type 1 on the second segment"
    ref_hidden, _ = hf_forward(hf, batch)
    out = ours(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    assert_close_on_mask(out.last_hidden_state, ref_hidden, batch.attention_mask, TOL["hidden"])


def test_padding_does_not_change_results(ours):
    alone = ours.encode(TEXTS[:1])
    padded = ours.encode(TEXTS)[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-6)


def test_encode_matches_sentence_transformers(ours, minilm_path):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(minilm_path, device="cpu").encode(TEXTS + ["word " * 400])
    emb = ours.encode(TEXTS + ["word " * 400], batch_size=3)
    assert emb.shape == ref.shape and emb.dtype == np.float32
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= TOL["cosine"], cos
    assert np.abs(emb - ref).max() <= TOL["hidden"]


def test_encode_unnormalised_is_mean_pooling(ours, hf):
    batch = ours.tokenize(TEXTS)
    ref_hidden, _ = hf_forward(hf, batch)
    m = batch.attention_mask[:, :, None]
    ref = (ref_hidden * m).sum(1) / m.sum(1)
    emb = ours.encode(TEXTS, normalize=False)
    assert np.abs(emb - ref).max() <= TOL["hidden"]


def test_encode_accepts_any_iterable(ours):
    gen = (t for t in TEXTS)
    np.testing.assert_array_equal(ours.encode(gen, batch_size=2), ours.encode(list(TEXTS), batch_size=2))


def _dropped_hf(path, keep):
    model = transformers.BertModel.from_pretrained(path).eval()
    model.encoder.layer = torch.nn.ModuleList([model.encoder.layer[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    return model


@pytest.mark.parametrize("keep", [[0, 2, 4], [5, 1], [3]])
def test_layer_dropping_matches_transformers(minilm_path, keep):
    ours = sparsebert.load(minilm_path, layers=keep)
    assert ours.config.num_hidden_layers == len(keep)
    batch = ours.tokenize(TEXTS)
    ref_hidden, ref_pooled = hf_forward(_dropped_hf(minilm_path, keep), batch)
    out = ours(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    assert_close_on_mask(out.last_hidden_state, ref_hidden, batch.attention_mask, TOL["hidden"])
    assert np.abs(out.pooler_output - ref_pooled).max() <= TOL["hidden"]


@pytest.mark.parametrize("layers", [[6], [-1], [0, 0], [], "0,1"])
def test_layer_dropping_rejects_bad_indices(minilm_path, layers):
    with pytest.raises(ValueError, match="layer"):
        sparsebert.load(minilm_path, layers=layers)


def test_comparison_detects_a_broken_model(ours, minilm_path):
    """The reference check must be able to fail: a model missing one layer is far off."""
    broken = sparsebert.load(minilm_path, layers=[0, 1, 2, 3, 4])
    batch = ours.tokenize(TEXTS)
    ref_hidden = ours(batch.input_ids, batch.attention_mask).last_hidden_state
    with pytest.raises(AssertionError, match="max abs diff"):
        assert_close_on_mask(
            broken(batch.input_ids, batch.attention_mask).last_hidden_state,
            ref_hidden, batch.attention_mask, TOL["hidden"],
        )


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_random_configs_match_transformers(tmp_path, act, sparsity):
    from make_checkpoints import make_random_bert

    path = make_random_bert(tmp_path / "m", hidden=48, layers=3, heads=4, intermediate=96,
                            vocab=120, hidden_act=act, sparsity=sparsity, seed=3)
    ours = sparsebert.load(path)
    hf = transformers.BertModel.from_pretrained(path).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 120, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    types = rng.integers(0, 2, size=ids.shape)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(types))
    out = ours(ids, mask, types)
    assert_close_on_mask(out.last_hidden_state, ref.last_hidden_state.numpy(), mask, TOL["hidden"])
    assert np.abs(out.pooler_output - ref.pooler_output.numpy()).max() <= TOL["hidden"]
