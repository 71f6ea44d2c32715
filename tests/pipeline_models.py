"""Small seeded BertFor... checkpoints with a hand-written WordPiece vocabulary, for pipeline tests.

Imported by tests/test_pipelines.py, test_streaming.py and test_cli_run.py (pytest puts tests/ on
sys.path). Every folder is written by transformers' own `save_pretrained`, so readers see exactly
what a real checkpoint looks like; initializer_range is raised so random heads give decisive labels.
"""

from __future__ import annotations

WORDS = (
    "the quick brown fox jumps over lazy dog paris is capital of france where does live a cat in "
    "house john works at google new york city what who river long flows through many countries "
    "and sea"
).split()
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,?!'") + WORDS
    + ["##s", "##ing", "##ed", "##er", "##ly", "##ish"]
    + list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
)
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def save_model(folder, model_cls, seed, **config_kwargs):
    import torch
    from transformers import BertConfig, BertTokenizerFast

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, initializer_range=0.3,
                     **config_kwargs)
    model_cls(cfg).eval().save_pretrained(str(folder))
    return folder


def make_models(root) -> dict:
    """One folder per task head (plus a bare BertModel) under `root`."""
    from transformers import (BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                              BertForTokenClassification, BertModel)

    return {
        "cls": save_model(root / "cls", BertForSequenceClassification, 1,
                          id2label={0: "negative", 1: "neutral", 2: "positive"},
                          label2id={"negative": 0, "neutral": 1, "positive": 2}),
        "multilabel": save_model(root / "multilabel", BertForSequenceClassification, 2, num_labels=4,
                                 problem_type="multi_label_classification"),
        "ner": save_model(root / "ner", BertForTokenClassification, 3,
                          id2label=dict(enumerate(NER_LABELS)),
                          label2id={v: k for k, v in enumerate(NER_LABELS)}),
        "qa": save_model(root / "qa", BertForQuestionAnswering, 4),
        "mlm": save_model(root / "mlm", BertForMaskedLM, 5),
        "base": save_model(root / "base", BertModel, 6),
    }
