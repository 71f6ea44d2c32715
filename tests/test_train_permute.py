"""Channel permutation before 1xC block pruning (`[pruning] permute = true`, sparsebert/train/permute.py):
the kept score share against hand computations, the grouping on a matrix whose best grouping is known,
and on a tiny BERT: the model's outputs unchanged by transformers itself, every tensor that shares the
reordered axis (producer rows and bias, consumer columns, optimiser moments, masks) moved together,
value channels never leaving their head, and a permuted run resuming bitwise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import EMB_RECIPE, _load_state, _texts, tiny_teacher  # noqa: E402,F401
from test_train_resume import LEVERS  # noqa: E402

from sparsebert.errors import ConfigError  # noqa: E402
from sparsebert.train import distill  # noqa: E402
from sparsebert.train.permute import block_keep_fraction, group_columns, permute_for_blocks  # noqa: E402
from sparsebert.train.recipe import parse_recipe  # noqa: E402
from sparsebert.train.trainer import train  # noqa: E402

PERMUTED = LEVERS.replace("calibration_texts = 20", "calibration_texts = 20\npermute = true")


def test_keep_fraction_by_hand():
    # one row, two 1x2 blocks: masses 1 + 2 = 3 and 3 + 4 = 7; dropping one keeps 7 / 10
    prof = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert block_keep_fraction(prof, np.arange(4), 2, 0.5) == pytest.approx(0.7)
    # order (0, 3, 1, 2): blocks 1 + 4 = 5 and 2 + 3 = 5, one kept: 5 / 10
    assert block_keep_fraction(prof, np.array([0, 3, 1, 2]), 2, 0.5) == pytest.approx(0.5)
    assert block_keep_fraction(prof, np.arange(4), 2, 0.0) == pytest.approx(1.0)


def test_grouping_finds_the_known_best_groups():
    # 4 row bands, 16 columns: column j matters (mass 1) only in band j % 4, so the best 1x4 groups
    # are the columns of one band, and a mask keeping a quarter of the blocks keeps everything. In the
    # given order every block mixes all four bands and keeps a quarter.
    rng = np.random.default_rng(0)
    prof = np.zeros((8, 16))
    for j in range(16):
        prof[2 * (j % 4): 2 * (j % 4) + 2, j] = 1.0 + 0.01 * rng.random(2)
    assert block_keep_fraction(prof, np.arange(16), 4, 0.75) == pytest.approx(0.25, abs=0.01)
    order = group_columns(prof, 4)
    assert sorted(order) == list(range(16))
    assert block_keep_fraction(prof, order, 4, 0.75) == pytest.approx(1.0)
    assert {frozenset(order[i:i + 4] % 4) for i in range(0, 16, 4)} == {frozenset([b]) for b in range(4)}
    with pytest.raises(ValueError, match="groups of 4"):
        group_columns(prof[:, :6], 4)


def _student(tiny_teacher):
    teacher = distill.load_teacher(tiny_teacher, "embeddings")
    return distill.make_student(teacher, tuple(range(teacher.config.num_hidden_layers)), 0.0)


def _match_columns(new, old):
    """For each column of `new`, the index of the equal column of `old` (columns are distinct floats)."""
    d = np.abs(new[:, :, None] - old[:, None, :]).sum(0)
    idx = d.argmin(1)
    assert np.allclose(d[np.arange(len(idx)), idx], 0) and len(set(idx)) == len(idx)
    return idx


def test_permutation_keeps_the_model_and_moves_everything_together(tiny_teacher):
    student = _student(tiny_teacher)
    params = distill.encoder_linears(student, ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"))
    optim = torch.optim.AdamW(student.parameters(), lr=1e-3)
    inputs = {"input_ids": torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    with torch.no_grad():
        for n, p in student.named_parameters():
            if n.endswith("bias"):
                p.normal_()  # BERT starts with zero biases: a bias left behind would not show
    out = student(**inputs).last_hidden_state
    (out * torch.randn(out.shape)).sum().backward()
    optim.step()  # moments now exist and differ from the weights
    masks = {n: torch.rand(p.shape) > 0.5 for n, p in params.items()}
    student.eval()
    with torch.no_grad():
        before = student(**inputs, output_hidden_states=True)
    old = {n: p.detach().clone().numpy() for n, p in student.named_parameters()}
    old_state = {n: optim.state[p]["exp_avg"].clone().numpy() for n, p in student.named_parameters()
                 if p in optim.state}  # the pooler is not in the graph
    old_masks = {n: m.clone().numpy() for n, m in masks.items()}

    report = permute_for_blocks(student, params, (1, 4), 0.75, None, optim, masks)

    with torch.no_grad():
        after = student(**inputs, output_hidden_states=True)
    for a, b in zip(after.hidden_states, before.hidden_states):
        assert torch.allclose(a, b, atol=1e-5)
    assert set(report) == {"ffn_out", "attn_out"}
    for kept_before, kept_after in report.values():
        assert kept_after > kept_before  # random weights: some grouping beats the given order
    new = {n: p.detach().numpy() for n, p in student.named_parameters()}
    heads, head_dim = 4, 8
    for layer in range(4):
        pre = f"encoder.layer.{layer}."
        for consumer, producer in (("output.dense", "intermediate.dense"),
                                   ("attention.output.dense", "attention.self.value")):
            c, pr = f"{pre}{consumer}.weight", f"{pre}{producer}"
            idx = _match_columns(new[c], old[c])
            assert not np.array_equal(idx, np.arange(len(idx)))
            assert np.array_equal(new[pr + ".weight"], old[pr + ".weight"][idx])
            assert np.array_equal(new[pr + ".bias"], old[pr + ".bias"][idx])
            assert np.array_equal(optim.state[student.get_parameter(c)]["exp_avg"].numpy(), old_state[c][:, idx])
            assert np.array_equal(optim.state[student.get_parameter(pr + ".weight")]["exp_avg"].numpy(),
                                  old_state[pr + ".weight"][idx])
            assert np.array_equal(masks[c].numpy(), old_masks[c][:, idx])
            assert np.array_equal(masks[pr + ".weight"].numpy(), old_masks[pr + ".weight"][idx])
            if producer.endswith("value"):
                assert np.array_equal(idx // head_dim, np.arange(heads * head_dim) // head_dim)
        for untouched in ("attention.self.query.weight", "attention.self.key.weight"):
            assert np.array_equal(new[pre + untouched], old[pre + untouched])


def test_a_grouping_that_keeps_less_is_not_applied(tiny_teacher, monkeypatch):
    import sparsebert.train.permute as permute

    student = _student(tiny_teacher)
    params = distill.encoder_linears(student, ("attn_out", "ffn_out"))
    old = {n: p.detach().clone() for n, p in student.named_parameters()}
    # the grouping proposes reversed columns, which (as scored here) keep less than the given order
    monkeypatch.setattr(permute, "group_columns", lambda prof, group: np.arange(prof.shape[1])[::-1].copy())
    monkeypatch.setattr(permute, "block_keep_fraction",
                        lambda prof, order, group, sparsity: 0.5 if (np.diff(order) > 0).all() else 0.4)
    report = permute_for_blocks(student, params, (1, 4), 0.75)
    assert report == {"ffn_out": [0.5, 0.5], "attn_out": [0.5, 0.5]}
    assert all(torch.equal(p, old[n]) for n, p in student.named_parameters())


def test_permute_needs_1xc_blocks():
    with pytest.raises(ConfigError, match="permute = true with block = '4x1'"):
        parse_recipe(PERMUTED.replace('block = "1x4"', 'block = "4x1"'))
    with pytest.raises(ConfigError, match="expected true or false"):
        parse_recipe(PERMUTED.replace("permute = true", "permute = 1"))
    assert parse_recipe(PERMUTED).pruning.permute and not parse_recipe(LEVERS).pruning.permute


def _run(out, teacher, **kw):
    return train(parse_recipe(PERMUTED), init=teacher, teacher=teacher, output=out, texts=_texts(),
                 progress=False, **kw)


def test_permuted_run_resumes_bitwise_and_reports(tiny_teacher, tmp_path):
    # the first mask update (and so the permutation) is at step 2: stop just before it, then after it
    whole = _run(tmp_path / "whole", tiny_teacher)
    for chunk in (2, 3):
        assert not _run(tmp_path / "parts", tiny_teacher, max_steps=chunk)["finished"]
    parts = _run(tmp_path / "parts", tiny_teacher)
    ref, got = _load_state(tmp_path / "whole"), _load_state(tmp_path / "parts")
    assert sorted(ref) == sorted(got) and all(np.array_equal(ref[n], got[n]) for n in ref)
    saved = json.loads((tmp_path / "parts" / "train.json").read_text())
    assert saved["channel_permutation"] == whole["channel_permutation"] == parts["channel_permutation"]
    for kept_before, kept_after in whole["channel_permutation"].values():
        assert 0 < kept_before <= kept_after <= 1
    zero = ref["encoder.layer.1.output.dense.weight"] == 0
    quads = zero.reshape(zero.shape[0], -1, 4)
    assert quads.all(-1).mean() == pytest.approx(0.75) and not (quads.any(-1) & ~quads.all(-1)).any()
