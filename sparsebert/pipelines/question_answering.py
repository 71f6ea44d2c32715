"""Extractive question answering on BertForQuestionAnswering checkpoints (qa_outputs (2, H)).

Follows transformers 4.x's `question-answering` pipeline (removed from transformers 5): the pair
(question, context) is tokenized with truncation of the context only; a context longer than
`max_seq_len` becomes several windows overlapping by `doc_stride` tokens. In each window, start and
end logits of tokens outside the context are set to -10000 before a softmax, the span score is
p_start · p_end over spans with start ≤ end < start + max_answer_len, and the best spans over all
windows win. Character offsets are widened to whole words (align_to_words). With
handle_impossible_answer, the [CLS] span's score (the smallest over windows) competes as an empty
answer {"answer": "", "start": 0, "end": 0}.
"""

from __future__ import annotations

import numpy as np

from ..batching import check_positive
from ..errors import InputError
from .base import Pipeline, check_text, check_top_k, linear

_MASKED_LOGIT = -10000.0  # what transformers uses, so scores match its pipeline


class QuestionAnsweringPipeline(Pipeline):
    task = "question-answering"
    defaults = {"top_k": 1, "doc_stride": None, "max_seq_len": None, "max_answer_len": 15,
                "handle_impossible_answer": False, "align_to_words": True}

    def __init__(self, model, folder, **kwargs):
        super().__init__(model, folder, **kwargs)
        H = model.config.hidden_size
        self.w = self.head_tensor("qa_outputs.weight", (2, H))
        self.b = self.head_tensor("qa_outputs.bias", (2,))
        self._window_tokenizers: dict = {}

    def __call__(self, inputs=None, *, question=None, context=None, **options):
        if inputs is None:
            if question is None or context is None:
                raise InputError("question-answering needs {'question': ..., 'context': ...} or "
                                 "question= and context= keywords")
            if isinstance(question, str):
                inputs = {"question": question, "context": context}
            else:
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
        return super().__call__(inputs, **options)

    def _is_single(self, inputs) -> bool:
        return isinstance(inputs, dict)

    def _check_options(self, opts):
        limit = self.model.tokenizer.max_length
        max_seq_len = opts["max_seq_len"] if opts["max_seq_len"] is not None else min(384, limit)
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or not 8 <= max_seq_len <= limit:
            raise ValueError(f"max_seq_len must be an integer in [8, {limit}], got {max_seq_len!r}")
        stride = opts["doc_stride"] if opts["doc_stride"] is not None else min(max_seq_len // 2, 128)
        if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < max_seq_len:
            raise ValueError(f"doc_stride must be an integer in [0, max_seq_len), got {stride!r}")
        opts["max_seq_len"], opts["doc_stride"] = max_seq_len, stride
        opts["top_k"] = check_top_k(opts["top_k"])
        opts["max_answer_len"] = check_positive("max_answer_len", opts["max_answer_len"])
        return opts

    def _windows(self, question: str, context: str, max_seq_len: int, stride: int) -> list:
        """The encodings of all windows of one (question, context) pair."""
        key = (max_seq_len, stride)
        tok = self._window_tokenizers.get(key)
        if tok is None:
            from tokenizers import Tokenizer as HFTokenizer

            tok = HFTokenizer.from_str(self.raw_tokenizer().to_str())
            tok.no_padding()
            tok.enable_truncation(max_length=max_seq_len, stride=stride, strategy="only_second")
            self._window_tokenizers[key] = tok
        try:
            first = tok.encode(question, context)
        except Exception as exc:  # tokenizers raises plain Exception when the question is too long
            raise InputError(
                f"cannot fit question and context into max_seq_len={max_seq_len} windows with "
                f"doc_stride={stride}: {exc}; shorten the question or raise max_seq_len"
            ) from None
        return [first, *first.overflowing]

    def _run_chunk(self, chunk, opts):
        examples, windows, owner = [], [], []
        for item in chunk:
            if not isinstance(item, dict) or {"question", "context"} - set(item):
                raise InputError(
                    "a question-answering input must be a dict with 'question' and 'context', got "
                    f"{item!r:.120}"
                )
            q = check_text(item["question"], "question")
            c = check_text(item["context"], "context")
            if not q.strip() or not c.strip():
                raise InputError("question and context must be non-empty strings")
            examples.append((q, c))
            for w in self._windows(q, c, opts["max_seq_len"], opts["doc_stride"]):
                windows.append(w)
                owner.append(len(examples) - 1)

        def head(out, ids, mask, types):
            logits = linear(out.last_hidden_state, self.w, self.b)  # (b, T, 2)
            return [lg[: int(m.sum())] for lg, m in zip(logits, mask)]

        logits = self.forward(windows, head)
        per_example: list[list] = [[] for _ in examples]
        for w, o, lg in zip(windows, owner, logits):
            per_example[o].append((w, lg))
        return [self._answers(c, wins, opts) for (_, c), wins in zip(examples, per_example)]

    def _answers(self, context: str, windows: list, opts):
        top_k, max_len = opts["top_k"], opts["max_answer_len"]
        null_score = 1e6
        answers = []
        for enc, lg in windows:
            seq = enc.sequence_ids
            allowed = np.array([s == 1 for s in seq], dtype=bool)  # context tokens only
            start = np.where(allowed, lg[:, 0], _MASKED_LOGIT).astype(np.float64)
            end = np.where(allowed, lg[:, 1], _MASKED_LOGIT).astype(np.float64)
            # [CLS] stays in the softmax (it carries the "no answer" score), then drops out.
            cls = [i for i, tid in enumerate(enc.ids) if enc.special_tokens_mask[i] and seq[i] is None][:1]
            for i in cls:
                start[i], end[i] = lg[i, 0], lg[i, 1]
            p_start = _softmax(start)
            p_end = _softmax(end)
            if opts["handle_impossible_answer"]:
                null_score = min(null_score, float(p_start[0] * p_end[0]))
            p_start[0] = p_end[0] = 0.0
            allowed_idx = allowed.copy()
            for i in cls:
                allowed_idx[i] = True
            for s, e, score in _best_spans(p_start, p_end, top_k, max_len, allowed_idx):
                a, b = self._chars(enc, int(s), int(e), opts["align_to_words"])
                answers.append({"score": float(score), "start": a, "end": b, "answer": context[a:b]})
        if opts["handle_impossible_answer"]:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
        if len(answers) == 1:
            return answers[0]
        return answers

    @staticmethod
    def _chars(enc, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
        if align_to_words:
            sw, ew = enc.token_to_word(s), enc.token_to_word(e)
            if sw is not None and ew is not None:
                a = enc.word_to_chars(sw, 1)
                b = enc.word_to_chars(ew, 1)
                if a is not None and b is not None:
                    return a[0], b[1]
        return enc.offsets[s][0], enc.offsets[e][1]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _best_spans(p_start, p_end, top_k: int, max_len: int, allowed: np.ndarray):
    """The top_k (start, end, score) spans by p_start·p_end with start ≤ end < start + max_len,
    then dropping spans that start or end outside `allowed` (transformers' order of operations)."""
    cand = np.tril(np.triu(np.outer(p_start, p_end)), max_len - 1)
    flat = cand.ravel()
    if top_k == 1:
        idx = np.array([np.argmax(flat)])
    elif flat.size <= top_k:
        idx = np.argsort(-flat)
    else:
        part = np.argpartition(-flat, top_k)[:top_k]
        idx = part[np.argsort(-flat[part])]
    starts, ends = np.unravel_index(idx, cand.shape)
    keep = allowed[starts] & allowed[ends]
    return [(s, e, cand[s, e]) for s, e in zip(starts[keep], ends[keep])]
