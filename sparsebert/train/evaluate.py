"""Task metrics of a trained (or one-shot pruned, or dense) model, measured with the sparsebert runtime.

Embeddings, against the dense teacher on held-out sentences (normalised mean-pooled embeddings):
  cosine_to_teacher   mean cosine between the student's and the teacher's embedding of each sentence
  top10_overlap       for each sentence, the share of its 10 nearest held-out neighbours (cosine,
                      itself excluded) that the student and the teacher agree on, averaged
  lee_spearman        Spearman correlation between the cosine of each pair of the 50 Lee documents and
                      the human similarity (1,225 pairs, upper triangle; Lee, Pincombe & Welsh 2005),
                      texts truncated at 256 tokens as sentence-transformers does for this model
  retrieval_*         a retrieval task on held-out pairs (JSON lines {"query", "document"}; the
                      fetch-data cache builds one from WordNet: a synset's words -> its definition,
                      definitions taken from the held-out sentences only): each query ranks every
                      document by cosine; recall@1, recall@10 and mean reciprocal rank of its own
                      document (ties counted in the query's favour), for the student and the teacher
Classification: accuracy on labelled JSON lines (label ids in the model's config order).

Everything runs through `sparsebert.load` / `sparsebert.pipeline`, so a metric is also a check that
the output folder loads and runs in the runtime. Left out: MTEB-style benchmark suites.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .data import read_labelled, read_lee, read_pairs, read_texts

HELDOUT_LIMIT = 2000


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of the k nearest neighbours (cosine, self excluded) that a and b agree on."""
    def neighbours(e):
        sims = e @ e.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def retrieval_scores(queries: np.ndarray, documents: np.ndarray) -> dict:
    """Query i's answer is document i; both (n, H) normalised. Rank = 1 + documents scored above it."""
    sims = queries @ documents.T
    own = np.diag(sims)
    rank = 1 + np.sum(sims > own[:, None], axis=1)
    return {"recall_at_1": float(np.mean(rank == 1)), "recall_at_10": float(np.mean(rank <= 10)),
            "mrr": float(np.mean(1.0 / rank)), "pairs": int(len(rank))}


def _retrieval(model, queries, documents) -> dict:
    return retrieval_scores(model.encode(queries), model.encode(documents))


_TEACHER_CACHE: dict = {}


def _teacher_value(key, compute):
    """The teacher's embeddings / score, computed once per process (points.py evaluates many students)."""
    if key not in _TEACHER_CACHE:
        _TEACHER_CACHE[key] = compute()
    return _TEACHER_CACHE[key]


def lee_spearman(model_path, lee_folder, layers=None) -> float:
    import sparsebert
    from scipy.stats import spearmanr

    docs, human = read_lee(lee_folder)
    emb = sparsebert.load(model_path, layers=layers, max_length=256).encode(docs)
    sims = (emb @ emb.T)[np.triu_indices(len(docs), 1)]
    return float(spearmanr(sims, human).statistic)


def evaluate_model(path, *, teacher=None, kind: str, eval_data=None, lee=None, layers=None,
                   retrieval=None) -> dict:
    import sparsebert

    out = {"model": str(path), "task": kind}
    if kind == "embeddings":
        if eval_data is not None:
            if teacher is None:
                raise ConfigError("held-out embedding metrics compare with the teacher: give --teacher")
            texts = read_texts(eval_data)[:HELDOUT_LIMIT]
            student = sparsebert.load(path, layers=layers).encode(texts)
            ref = _teacher_value(("heldout", str(teacher), str(eval_data)),
                                 lambda: sparsebert.load(teacher).encode(texts))
            out["heldout_sentences"] = len(texts)
            out["cosine_to_teacher"] = float(np.mean(np.sum(student * ref, axis=1)))
            out["top10_overlap"] = top_k_overlap(student, ref)
        if lee is not None:
            out["lee_spearman"] = lee_spearman(path, lee, layers)
            if teacher is not None:
                out["teacher_lee_spearman"] = _teacher_value(("lee", str(teacher), str(lee)),
                                                             lambda: lee_spearman(teacher, lee))
        if retrieval is not None:
            queries, documents = read_pairs(retrieval)
            got = _retrieval(sparsebert.load(path, layers=layers), queries, documents)
            out.update({f"retrieval_{k}": v for k, v in got.items()})
            if teacher is not None:
                ref = _teacher_value(("retrieval", str(teacher), str(retrieval)),
                                     lambda: _retrieval(sparsebert.load(teacher), queries, documents))
                out.update({f"teacher_retrieval_{k}": v for k, v in ref.items() if k != "pairs"})
    elif kind == "classification":
        if eval_data is None:
            raise ConfigError("classification metrics need labelled --eval-data (JSON lines)")
        texts, labels = read_labelled(eval_data)
        clf = sparsebert.pipeline("text-classification", path, layers=layers)
        preds = clf(texts)
        names = list(clf.labels)
        pred_ids = np.array([names.index(p["label"]) for p in preds])
        out["eval_data"] = str(Path(eval_data))
        out["examples"] = len(texts)
        out["accuracy"] = float(np.mean(pred_ids == labels))
    else:
        raise ConfigError(f"task must be 'embeddings' or 'classification', got {kind!r}")
    return out
