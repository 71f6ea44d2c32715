"""sparsebert.train levers for accuracy at high sparsity: Wanda scores, LR restarts per mask
update, frozen embeddings, 1x4 blocks and int8-aware (fake-quantized) steps; each against a hand
computation or an independent path (the int8 runtime of `sparsebert quantize`).

Tiny seeded BERTs and a handful of steps, as in test_train.py, whose recipe and fixtures are reused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import EMB_RECIPE, _load_state, _texts, tiny_teacher  # noqa: E402,F401

from sparsebert.errors import ConfigError  # noqa: E402
from sparsebert.train import distill, fakequant  # noqa: E402
from sparsebert.train.calibrate import calibration_rows, input_norms  # noqa: E402
from sparsebert.train.gmp import MaskSet, lr_at  # noqa: E402
from sparsebert.train.recipe import RECIPES_DIR, load_recipe, parse_recipe  # noqa: E402
from sparsebert.train.trainer import train  # noqa: E402


# --- recipe keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, quoted", [
    (("update_every = 5", "update_every = 5\ninit_method = \"obs\""), "init_method = 'obs'"),
    (("update_every = 5", "update_every = 5\nscore = \"movement\""), "score = 'movement'"),
    (("update_every = 5", "update_every = 5\ncalibration_texts = 0"), "calibration_texts = 0"),
    (("[task]", "[student]\nfreeze_embeddings = \"yes\"\n[task]"), "freeze_embeddings = 'yes'"),
    (("lr_schedule = \"decay-after-pruning\"", "lr_schedule = \"restart\""), "restart"),
    (("threads = 1", "threads = 1\n[quantization]\nfake_quant_start = -1"), "fake_quant_start = -1"),
    (("threads = 1", "threads = 1\n[quantization]\nfake_quant_start = 2\nfake_quant_start_epoch = 1"),
     "exactly one of fake_quant_start"),
    (("threads = 1", "threads = 1\n[quantization]\nstart = 2"), "unknown key(s) ['start']"),
])
def test_bad_lever_keys_name_the_value(edit, quoted):
    old, new = edit
    assert old in EMB_RECIPE
    with pytest.raises(ConfigError) as err:
        parse_recipe(EMB_RECIPE.replace(old, new, 1))
    assert quoted in str(err.value)


def test_lever_keys_parse_and_restart_needs_pruning():
    r = parse_recipe(EMB_RECIPE.replace("update_every = 5", "update_every = 5\ninit_method = \"wanda\"\n"
                                        "score = \"wanda\"\ncalibration_texts = 16")
                     .replace("[task]", "[student]\nfreeze_embeddings = true\n[task]")
                     .replace("threads = 1", "threads = 1\n[quantization]\nfake_quant_start_epoch = 1.5"))
    assert (r.pruning.init_method, r.pruning.score, r.pruning.calibration_texts) == ("wanda", "wanda", 16)
    assert r.student.freeze_embeddings is True
    assert r.fake_quant_step(64) == 12  # 1.5 epochs of ceil(64 / 8) = 8 steps
    with pytest.raises(ConfigError, match="at or after the run's end"):
        r.fake_quant_step(200)  # 1.5 x 25 steps > 24
    assert parse_recipe(EMB_RECIPE).fake_quant_step(64) is None
    dense = EMB_RECIPE.split("[pruning]")[0] + "[distillation]" + EMB_RECIPE.split("[distillation]")[1]
    with pytest.raises(ConfigError, match="restart-per-update"):
        parse_recipe(dense.replace("decay-after-pruning", "restart-per-update"))


def test_new_shipped_recipes_use_the_levers():
    for name in ("minilm-emb-80-1x4-int8", "minilm-emb-80-1x4-int8-2h", "minilm-emb-90-1x4-int8",
                 "minilm-sent-80-1x4-int8", "minilm-sent-90-1x4-int8"):
        r = load_recipe(name)
        assert r.pruning.block_shape == (1, 4) and r.quantization is not None, name
        assert r.training.lr_schedule == "restart-per-update"
        assert r.text == (RECIPES_DIR / f"{name}.toml").read_text(encoding="utf-8")


def test_every_shipped_student_recipe_takes_the_measured_levers():
    # The ablations' winners (notebooks/results/ablations): one-shot start plus LR restarted at each
    # mask update, teacher-normalised hidden loss. Only the GMP-only baseline keeps the old schedule.
    for path in sorted(RECIPES_DIR.glob("minilm-*.toml")):
        r = load_recipe(path.stem)
        if r.pruning is None or path.stem.endswith("gmp-only"):
            continue
        assert r.training.lr_schedule == "restart-per-update", path.stem
        assert r.distillation.hidden_norm == "teacher" and r.pruning.initial_sparsity >= 0.3, path.stem


# --- LR restarts -------------------------------------------------------------------------------


def test_lr_restarts_at_each_mask_update():
    # Updates at 10, 30, 50 (start 10, end 50, every 20); after 50, decay to 0 at step 100.
    lr = [lr_at(s, 1.0, 0, "restart-per-update", 100, 50, 10, 20) for s in range(100)]
    assert lr[5] == 1.0 and lr[10] == 1.0
    assert lr[20] == pytest.approx(0.5) and lr[29] == pytest.approx(0.05)
    assert lr[30] == 1.0 and lr[40] == pytest.approx(0.5) and lr[49] == pytest.approx(0.05)
    assert lr[50] == 1.0 and lr[75] == pytest.approx(0.5) and lr[99] == pytest.approx(0.02)
    # end not on the grid: updates at 0, 10, 20, 25; the segment 20..25 is 5 steps long
    assert lr_at(22, 2.0, 0, "restart-per-update", 40, 25, 0, 10) == pytest.approx(2.0 * 0.6)
    assert lr_at(25, 2.0, 0, "restart-per-update", 40, 25, 0, 10) == 2.0
    assert lr_at(1, 2.0, 4, "restart-per-update", 40, 25, 0, 10) == pytest.approx(1.0)  # warm-up first


# --- Wanda -------------------------------------------------------------------------------------


def test_wanda_scores_on_hand_example():
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 0.5]]))
    masks = MaskSet({"w": w}, (1, 1), "per-layer")
    # |W| x ||x||, ||x|| = [4, 1]: [[4, 2], [12, 0.5]] -> half pruned drops 0.5 and 2
    masks.update(0.5, {"w": np.array([4.0, 1.0])})
    assert masks.masks["w"].tolist() == [[True, False], [True, False]]
    w2 = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 0.5]]))
    by_magnitude = MaskSet({"w": w2}, (1, 1), "per-layer")
    by_magnitude.update(0.5)  # drops 0.5 and 1
    assert by_magnitude.masks["w"].tolist() == [[False, True], [True, False]]


def test_input_norms_match_hidden_states(tiny_teacher):
    # The input of layer i's query / key / value is hidden_states[i]: an independent path.
    from sparsebert.tokenizer import Tokenizer

    model = distill.load_teacher(tiny_teacher, "embeddings")
    params = distill.encoder_linears(model, ("query", "key"))
    texts = _texts(10, seed=2)
    tok = Tokenizer(tiny_teacher, 16)
    norms = input_norms(model, params, texts, tok, batch_size=4)
    assert sorted(norms) == sorted(params)
    sq = 0.0
    for at in range(0, 10, 4):  # batches of 4, each padded to its own longest text
        b = tok(texts[at:at + 4])
        with torch.no_grad():
            hs = model(input_ids=torch.from_numpy(b.input_ids), attention_mask=torch.from_numpy(b.attention_mask),
                       token_type_ids=torch.from_numpy(b.token_type_ids), output_hidden_states=True).hidden_states
        keep = torch.from_numpy(b.attention_mask).bool()
        sq = sq + torch.stack([(h[keep].double() ** 2).sum(0) for h in hs[:-1]])
    for i in range(4):
        for lin in ("query", "key"):
            want = np.sqrt(sq[i].numpy())
            np.testing.assert_allclose(norms[f"encoder.layer.{i}.attention.self.{lin}.weight"], want, rtol=1e-5)
    rows = calibration_rows(100, 16, 3)
    assert len(set(rows.tolist())) == 16 and np.array_equal(rows, calibration_rows(100, 16, 3))
    assert calibration_rows(5, 16, 3).tolist() == [0, 1, 2, 3, 4]


def test_wanda_one_shot_start_in_a_run(tiny_teacher, tmp_path):
    # One step with init_method = "wanda": the mask of the jump to 50% at step 0 is the one Wanda's
    # scores on the (unchanged) teacher weights give, and differs from the magnitude mask.
    from sparsebert.tokenizer import Tokenizer

    text = (EMB_RECIPE.replace("start = 2", "start = 0").replace("final_sparsity = 0.75",
            "final_sparsity = 0.75\ninitial_sparsity = 0.5\ninit_method = \"wanda\"\ncalibration_texts = 12"))
    recipe = parse_recipe(text)
    texts = _texts()
    train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "w", texts=texts,
          progress=False, max_steps=1)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "w" / "checkpoint" / "state.safetensors"))
    teacher = distill.load_teacher(tiny_teacher, "embeddings")
    params = distill.encoder_linears(teacher, recipe.pruning.linears)
    calib = [texts[i] for i in calibration_rows(len(texts), 12, 3)]
    norms = input_norms(teacher, params, calib, Tokenizer(tiny_teacher, 16), 8)
    differs = 0
    for name, wt in params.items():
        score = wt.detach().abs().numpy() * norms[name][None, :]
        keep = score > np.sort(score.ravel())[score.size // 2 - 1]
        got = saved[f"mask.{name}"].bool().numpy()
        assert np.array_equal(got, keep), name
        magnitude = wt.detach().abs().numpy()
        differs += not np.array_equal(got, magnitude > np.sort(magnitude.ravel())[score.size // 2 - 1])
    assert differs >= len(params) // 2


# --- frozen embeddings, 1x4 blocks -------------------------------------------------------------


def test_freeze_embeddings_keeps_the_teachers(tiny_teacher, tmp_path):
    recipe = parse_recipe(EMB_RECIPE.replace("[task]", "[student]\nfreeze_embeddings = true\n[task]")
                          .replace("end = 12", "end = 4").replace("steps = 24", "steps = 6"))
    train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "f", texts=_texts(), progress=False)
    got, ref = _load_state(tmp_path / "f"), _load_state(tiny_teacher)
    emb = [n for n in ref if n.startswith("embeddings.") and "position_ids" not in n]
    assert len(emb) == 5  # word, position, token type, LayerNorm weight and bias
    for n in emb:
        assert np.array_equal(got[n], ref[n]), n
    assert not np.array_equal(got["encoder.layer.0.attention.output.LayerNorm.weight"],
                              ref["encoder.layer.0.attention.output.LayerNorm.weight"])


def test_1x4_blocks_are_four_input_columns_of_one_row():
    g = torch.Generator().manual_seed(1)
    params = {"a": torch.nn.Parameter(torch.randn(6, 16, generator=g)),
              "b": torch.nn.Parameter(torch.randn(8, 12, generator=g))}
    masks = MaskSet(params, (1, 4), "per-layer")
    masks.update(0.5)
    for n, p in params.items():
        zero = (p == 0).numpy()
        quads = zero.reshape(p.shape[0], p.shape[1] // 4, 4)
        assert (quads.all(-1) | ~quads.any(-1)).all(), "zeros not in whole 1x4 blocks"
        assert quads.all(-1).sum() == round(0.5 * quads.shape[0] * quads.shape[1])
    with pytest.raises(ValueError, match="does not divide"):
        MaskSet({"c": torch.nn.Parameter(torch.ones(4, 6))}, (1, 4), "per-layer")
    # the kept quads are the largest by L2 norm (hand check on one row)
    w = torch.nn.Parameter(torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0]]))
    m = MaskSet({"w": w}, (1, 4), "per-layer")
    m.update(0.5)  # quad norms 2 and 3: the first quad goes
    assert w.detach().tolist() == [[0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0]]


# --- fake quantization -------------------------------------------------------------------------


def test_fake_quant_matches_the_int8_scheme_by_hand():
    from sparsebert.quant import quantize_weight

    w = torch.tensor([[0.5, -1.27, 0.0, 0.004], [0.0, 0.0, 0.0, 0.0], [2.54, 1.0, -0.01, 0.0]])
    q = fakequant.quantize_weight(w)
    # row 0: scale 1.27 / 127 = 0.01 -> codes 50, -127, 0, 0 (0.4 rounds to 0)
    assert q[0].tolist() == pytest.approx([0.5, -1.27, 0.0, 0.0], abs=1e-7)
    assert q[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # all-zero row: scale 0
    codes, scale = quantize_weight(w.numpy())
    np.testing.assert_array_equal(q.numpy(), codes.astype(np.float32) * scale[:, None])
    x = torch.tensor([[[1.0, -0.25, 0.5, 0.005], [0.0, 0.0, 0.0, 0.0]]])  # (B=1, T=2, K=4)
    qx = fakequant.quantize_tokens(x)
    s = 1.0 / 127  # token 0: codes 127, -32 (31.75), 64 (63.5 -> even), 1 (0.635)
    assert qx[0, 0].tolist() == pytest.approx([127 * s, -32 * s, 64 * s, 1 * s], rel=1e-6)
    assert qx[0, 1].tolist() == [0.0, 0.0, 0.0, 0.0]
    # straight-through: the gradient is the identity's
    wg = w.clone().requires_grad_(True)
    g = torch.arange(12.0).reshape(3, 4)
    (fakequant.quantize_weight(wg) * g).sum().backward()
    assert torch.equal(wg.grad, g)


def test_int8_aware_run_quantizes_as_it_trained(tiny_teacher, tmp_path):
    # Fake quantization from step 2 in 1x4 blocks; the output is a plain float folder with exact
    # zeros, and `sparsebert quantize` of it runs what the fake-quantized student computed.
    import sparsebert
    from sparsebert.quant import quantize
    from transformers import BertModel

    text = (EMB_RECIPE.replace("final_sparsity = 0.75", "final_sparsity = 0.5\nblock = \"1x4\"")
            .replace("end = 12", "end = 6").replace("steps = 24", "steps = 10")
            .replace("threads = 1", "threads = 1\n[quantization]\nfake_quant_start = 2"))
    out = tmp_path / "s"
    summary = train(parse_recipe(text), init=tiny_teacher, teacher=tiny_teacher, output=out, texts=_texts(),
                    progress=False)
    assert summary["fake_quant_from_step"] == 2
    state = _load_state(out)
    w = state["encoder.layer.1.intermediate.dense.weight"]
    assert w.dtype == np.float32 and len(np.unique(w)) > 1000  # float weights, not dequantized codes
    quads = (w == 0).reshape(w.shape[0], -1, 4)
    assert quads.all(-1).mean() == pytest.approx(0.5) and not (quads.any(-1) & ~quads.all(-1)).any()
    quantize(out, tmp_path / "q", onnx=False)
    texts = _texts(6, seed=9)
    # float32 attention: the fake-quantized student quantizes the linears only (int8 attention,
    # the runtime's default on VNNI, is checked in tests/test_attention_int8.py)
    int8 = sparsebert.load(tmp_path / "q", int8_attention=False)
    batch = int8.tokenize(texts)
    got = int8(batch.input_ids, batch.attention_mask, batch.token_type_ids).last_hidden_state
    student = BertModel.from_pretrained(str(out)).eval()
    inputs = dict(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask),
                  token_type_ids=torch.from_numpy(batch.token_type_ids))
    with torch.no_grad():
        plain = student(**inputs).last_hidden_state.numpy()
        modules = fakequant.install(student)
        assert len(modules) == 4 * 6
        fq = student(**inputs).last_hidden_state.numpy()
        fakequant.remove(modules)
        again = student(**inputs).last_hidden_state.numpy()
    keep = batch.attention_mask.astype(bool)
    err_fq = np.abs(got[keep] - fq[keep]).max()
    err_float = np.abs(got[keep] - plain[keep]).max()
    assert err_fq <= 1e-5 and err_float >= 1e-4, (err_fq, err_float)  # measured 1.2e-6 and 6.5e-4
    assert np.array_equal(again, plain)
    assert json.loads((out / "config.json").read_text()).get("quantization") is None


def test_classification_run_with_every_lever(tiny_teacher, tmp_path):
    # A sentiment-style student (BertForSequenceClassification: parameters under "bert."): Wanda
    # start and updates, LR restarts, frozen embeddings, 1x4 blocks, fake quantization for the last
    # epoch; the int8 runtime's logits match the fake-quantized torch student's.
    import sparsebert
    from sparsebert.quant import quantize
    from test_train import CLS_STUDENT, CLS_TEACHER
    from transformers import BertForSequenceClassification

    texts = _texts(80, seed=1)
    labels = np.array([int("fox" in t or "dog" in t) for t in texts])
    teacher = tmp_path / "teacher"
    train(parse_recipe(CLS_TEACHER), init=tiny_teacher, output=teacher, texts=texts, labels=labels, progress=False)
    text = (CLS_STUDENT.replace("block = \"4x1\"", "block = \"1x4\"\ninit_method = \"wanda\"\nscore = \"wanda\"\n"
                                "initial_sparsity = 0.2\ncalibration_texts = 24")
            .replace("layers = [1, 3]", "layers = [1, 3]\nfreeze_embeddings = true")
            .replace("lr = 1e-3", "lr = 1e-3\nlr_schedule = \"restart-per-update\"")
            .replace("threads = 1", "threads = 1\n[quantization]\nfake_quant_start_epoch = 1"))
    out = tmp_path / "student"
    summary = train(parse_recipe(text), init=teacher, teacher=teacher, output=out, texts=texts, labels=labels,
                    progress=False)
    assert summary["finished"] and summary["fake_quant_from_step"] == 10
    assert summary["encoder_linear_sparsity"] == pytest.approx(0.5, abs=0.01)
    quantize(out, tmp_path / "q", onnx=False)
    clf = sparsebert.pipeline("text-classification", tmp_path / "q", top_k=None, function_to_apply="none",
                              int8_attention=False)  # the linears' quantization only, as the student
    got = np.array([[{d["label"]: d["score"] for d in row}[n] for n in ("neg", "pos")] for row in clf(texts[:6])])
    ref = BertForSequenceClassification.from_pretrained(str(out)).eval()
    tok = sparsebert.load(out).tokenize(texts[:6])
    inputs = dict(input_ids=torch.from_numpy(tok.input_ids), attention_mask=torch.from_numpy(tok.attention_mask),
                  token_type_ids=torch.from_numpy(tok.token_type_ids))
    with torch.no_grad():
        plain = ref(**inputs).logits.numpy()
        fakequant.install(ref)
        fq = ref(**inputs).logits.numpy()
    err_fq, err_float = np.abs(got - fq).max(), np.abs(got - plain).max()
    assert err_fq <= 1e-4 and err_float > 10 * err_fq, (err_fq, err_float)


# --- attention distillation --------------------------------------------------------------------


def test_attention_kl_matches_numpy():
    rng = np.random.default_rng(4)
    B, Hh, T = 2, 3, 4
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])

    def probs(n_layers):
        z = rng.normal(size=(n_layers, B, Hh, T, T))
        z = np.where(mask[None, :, None, None, :] == 1, z, -np.inf)  # padded keys get 0
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    s, t = probs(2), probs(4)
    want = []
    for a, b in [(1, 2), (2, 4)]:  # layer_map(2, 4) without the embeddings
        ps, pt = s[a - 1], t[b - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(pt > 0, pt * (np.log(pt) - np.log(ps)), 0.0).sum(-1)  # (B, heads, T)
        want.append(np.mean([kl[i, h, j] for i in range(B) for h in range(Hh) for j in range(T) if mask[i, j]]))
    got = distill.attention_kl(tuple(torch.tensor(x) for x in s), tuple(torch.tensor(x) for x in t),
                               torch.tensor(mask))
    assert float(got) == pytest.approx(np.mean(want), rel=1e-9)
    same = distill.attention_kl(tuple(torch.tensor(x) for x in t), tuple(torch.tensor(x) for x in t),
                                torch.tensor(mask))
    assert abs(float(same)) < 1e-12


def test_attention_distillation_run(tiny_teacher, tmp_path):
    recipe = parse_recipe(EMB_RECIPE.replace("hidden_weight = 0.5", "hidden_weight = 0.5\nattention_weight = 1.0")
                          .replace("[task]", "[student]\nlayers = [0, 3]\n[task]").replace("steps = 24", "steps = 30")
                          .replace("final_sparsity = 0.75", "final_sparsity = 0.0"))
    summary = train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "a", texts=_texts(),
                    progress=False)
    curve = [loss for _, loss in summary["loss_curve"]]
    assert summary["finished"] and np.isfinite(curve).all() and np.mean(curve[-5:]) < np.mean(curve[:5])
    with pytest.raises(ConfigError, match="attention_weight = -1.0"):
        parse_recipe(EMB_RECIPE.replace("hidden_weight = 0.5", "hidden_weight = 0.5\nattention_weight = -1.0"))
