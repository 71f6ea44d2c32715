"""Teacher and student models (transformers BertModel / BertForSequenceClassification) and the
distillation losses.

Student: the teacher's config with `num_hidden_layers = len(kept)`, initialised from the teacher with
encoder layer kept[i] copied into student layer i (embeddings, pooler and task head copied as they
are). Layer dropping follows "compound sparsification" (Kurtic et al. 2022, "The Optimal BERT
Surgeon", sec. 4; Sanh et al. 2019 DistilBERT for initialising from teacher layers).

Losses (all means over the batch):
  pooled_cosine   1 - cos(mean-pool(student), mean-pool(teacher)), mean over the batch
  pooled_mse      mean over batch and features of (mean-pool(student) - mean-pool(teacher))^2
  hidden_mse      per mapped layer, squared error averaged over features and non-padding tokens,
                  then averaged over layers; student layer j (1-based output j) is matched to teacher
                  output round(j * L_teacher / L_student), the uniform map of TinyBERT / DistilBERT,
                  and the embedding outputs to each other; with normalize=True each layer's error is
                  divided by the teacher's mean square on the same tokens (SquareHead, Kurtic et al.
                  2023, "Sparse Fine-tuning for Inference Acceleration of LLMs"), so layers whose hidden
                  states are large do not drown the others
  attention_kl    per mapped layer (the same map, embeddings left out), KL(teacher || student) of the
                  attention probabilities of each head and each non-padding query token, averaged,
                  then averaged over layers (the attention transfer of MiniLM, Wang et al. 2020; needs
                  the "eager" attention, which returns the probabilities)
  kd_loss         hardness * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - hardness) * CE(s, y)
                  (Hinton et al. 2015; SparseML's "hardness" weights the distillation term)

Left out: value-relation and multi-head relation losses (MiniLMv2), intermediate projections for
students of another width.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from ..prune import drop_layers


def read_bert_config(folder: str | Path) -> dict:
    """config.json of a BERT folder, or CheckpointError saying why it is not one."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir() or not cfg_path.is_file():
        raise CheckpointError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json); "
                              f"give the folder of a BERT checkpoint, e.g. all-MiniLM-L6-v2")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(cfg_path)!r}: {exc}") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "bert":
        kind = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise CheckpointError(f"{str(folder)!r} holds a {kind!r} model, not a BERT model "
                              f"(config.json model_type must be \"bert\")")
    return cfg


def load_teacher(folder, kind: str, attn: str = "sdpa"):
    """The teacher in eval mode: BertModel for embeddings, BertForSequenceClassification otherwise."""
    from transformers import BertForSequenceClassification, BertModel

    cfg = read_bert_config(folder)
    if kind == "classification" and not any("SequenceClassification" in a for a in cfg.get("architectures") or []):
        raise CheckpointError(f"{str(folder)!r} is not a BertForSequenceClassification model; "
                              f"fine-tune one first with `sparsebert finetune`")
    cls = BertModel if kind == "embeddings" else BertForSequenceClassification
    try:
        model = cls.from_pretrained(str(folder), attn_implementation=attn)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"transformers cannot load {str(folder)!r} as a BERT model: {exc}") from None
    return model.eval()


def make_student(teacher, kept: tuple[int, ...], dropout: float):
    """A new model of the teacher's class with encoder layers `kept` copied from it."""
    import copy

    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(kept)
    cfg.hidden_dropout_prob = dropout
    cfg.attention_probs_dropout_prob = dropout
    student = type(teacher)(cfg)
    state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    state, _ = drop_layers(state, kept, teacher.config.num_hidden_layers)
    missing, unexpected = student.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise CheckpointError(f"student init from the teacher: missing {real_missing}, unexpected {unexpected}")
    return student


def head_from_backbone(folder, labels: tuple[str, ...], dropout: float, attn: str = "sdpa"):
    """BertForSequenceClassification over a BertModel folder, with a new head for `labels`."""
    from transformers import BertForSequenceClassification

    read_bert_config(folder)
    try:
        model = BertForSequenceClassification.from_pretrained(
            str(folder), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)}, hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout, attn_implementation=attn)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"transformers cannot load {str(folder)!r} as a BERT model: {exc}") from None
    return model


def encoder_linears(model, names: tuple[str, ...]) -> dict:
    """{parameter name: weight} of the chosen encoder linears of every layer."""
    suffix = {"query": "attention.self.query", "key": "attention.self.key",
              "value": "attention.self.value", "attn_out": "attention.output.dense",
              "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
    wanted = tuple(f".{suffix[n]}.weight" for n in names)
    return {n: p for n, p in model.named_parameters()
            if ".encoder.layer." in f".{n}" and n.endswith(wanted) and p.dim() == 2}


def model_inputs(batch) -> dict:
    """A tokenised batch (sparsebert.tokenizer) as the keyword arguments of a transformers BERT model."""
    import torch

    return dict(input_ids=torch.from_numpy(batch.input_ids),
                attention_mask=torch.from_numpy(batch.attention_mask),
                token_type_ids=torch.from_numpy(batch.token_type_ids))


# --- losses ------------------------------------------------------------------------------------


def mean_pool(hidden, mask):
    """(B, T, H), (B, T) → (B, H): average over non-padding tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def pooled_cosine(student, teacher):
    import torch

    return (1.0 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()


def pooled_mse(student, teacher):
    return ((student - teacher) ** 2).mean()


def layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student, teacher) indices into `hidden_states` (0 = embeddings, j = output of layer j)."""
    return [(0, 0)] + [(j, round(j * n_teacher / n_student)) for j in range(1, n_student + 1)]


def hidden_mse(student_states, teacher_states, mask, normalize: bool = False):
    """Mean over mapped layers of the masked token MSE (see the module docstring)."""
    m = mask.unsqueeze(-1).to(student_states[0].dtype)
    n_tokens = m.sum().clamp_min(1.0)
    pairs = layer_map(len(student_states) - 1, len(teacher_states) - 1)
    total = 0.0
    for s, t in pairs:
        diff = (student_states[s] - teacher_states[t]) ** 2 * m
        err = diff.mean(-1).sum() / n_tokens
        if normalize:
            err = err / ((teacher_states[t] ** 2 * m).mean(-1).sum() / n_tokens).clamp_min(1e-12)
        total = total + err
    return total / len(pairs)


def attention_kl(student_attns, teacher_attns, mask):
    """Mean over mapped layers of the masked attention KL (see the module docstring).
    attns: one (B, heads, T, T) probability tensor per layer; mask (B, T)."""
    import torch

    q = mask.to(student_attns[0].dtype)[:, None, :]  # (B, 1, T): query rows that count
    n_rows = (q.sum() * student_attns[0].shape[1]).clamp_min(1.0)
    pairs = layer_map(len(student_attns), len(teacher_attns))[1:]
    total = 0.0
    for s, t in pairs:
        ps, pt = student_attns[s - 1], teacher_attns[t - 1]
        kl = (torch.xlogy(pt, pt) - pt * torch.log(ps.clamp_min(1e-12))).sum(-1)  # (B, heads, T)
        total = total + (kl * q).sum() / n_rows
    return total / len(pairs)


def kd_loss(student_logits, teacher_logits, labels, temperature: float, hardness: float):
    import torch.nn.functional as F

    ce = F.cross_entropy(student_logits, labels)
    if hardness == 0.0:
        return ce
    T = temperature
    kl = F.kl_div(F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits / T, -1),
                  reduction="batchmean", log_target=True) * (T * T)
    return hardness * kl + (1.0 - hardness) * ce
