"""sparsebert.train: recipes, the GMP schedule and masks, distillation losses, resume, and tiny
end-to-end runs whose output folders must load in sparsebert and match transformers.

Tiny seeded BERTs (hidden 32, vocab of tests/pipeline_models.py) and tens of steps: these check the
plumbing, not the accuracy (the full MiniLM runs live in notebooks/compound_sparsification.ipynb).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sparsebert.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from sparsebert.train import distill  # noqa: E402
from sparsebert.train.gmp import MaskSet, cubic_sparsity, is_update_step, lr_at  # noqa: E402
from sparsebert.train.recipe import RECIPES_DIR, check_layers, load_recipe, parse_recipe  # noqa: E402
from sparsebert.train.trainer import BatchOrder, train  # noqa: E402

EMB_RECIPE = """
[task]
kind = "embeddings"
[pruning]
final_sparsity = 0.75
start = 2
end = 12
update_every = 5
[distillation]
pooled_loss = "cosine"
hidden_weight = 0.5
[training]
lr = 3e-3
warmup_steps = 2
lr_schedule = "decay-after-pruning"
batch_size = 8
max_length = 16
steps = 24
seed = 3
threads = 1
"""


def _texts(n=64, seed=0):
    from pipeline_models import WORDS

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A 4-layer BertModel with a WordPiece tokenizer."""
    from pipeline_models import VOCAB
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("teacher")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(11)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(str(folder))
    return folder


# --- recipes ---------------------------------------------------------------------------------


def test_shipped_recipes_parse():
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
    for kind in ("emb", "sent"):
        for variant in ("80", "90", "95", "90-4x1", "3l-80", "3l-90"):
            assert f"minilm-{kind}-{variant}" in names
    for name in names:
        r = load_recipe(name)
        assert r.text == (RECIPES_DIR / f"{name}.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize("edit, quoted", [
    (("[training]", "[training]\nlearning_rate = 0.1"), "learning_rate"),
    (("[task]", "[tasks]\n[task]"), "tasks"),
    (("start = 2\nend = 12", "start = 12\nend = 2"), "end = 2"),
    (("final_sparsity = 0.75", "final_sparsity = 1.0"), "final_sparsity = 1.0"),
    (("final_sparsity = 0.75", "final_sparsity = 0.5\ninitial_sparsity = 0.6"), "0.6"),
    (("final_sparsity = 0.75", "final_sparsity = 0.75\nblock = \"4by1\""), "4by1"),
    (("final_sparsity = 0.75", "final_sparsity = 0.75\nlinears = [\"query\", \"gate\"]"), "gate"),
    (("steps = 24", "steps = \"24\""), "steps = '24'"),
    (("steps = 24", "steps = 24\nepochs = 1"), "exactly one of steps and epochs"),
    (("[task]", "[student]\nlayers = [0, 0]\n[task]"), "[0, 0]"),
    (("pooled_loss = \"cosine\"", "pooled_loss = \"l1\""), "l1"),
])
def test_bad_recipes_name_the_value(edit, quoted):
    old, new = edit
    assert old in EMB_RECIPE
    with pytest.raises(ConfigError) as err:
        parse_recipe(EMB_RECIPE.replace(old, new, 1))
    assert quoted in str(err.value)


def test_kept_layer_must_exist_and_bad_toml():
    r = parse_recipe(EMB_RECIPE.replace("[task]", "[student]\nlayers = [0, 6]\n[task]"))
    assert check_layers(r, 8) == (0, 6)
    with pytest.raises(ConfigError, match=r"\[6\] do not exist"):
        check_layers(r, 6)
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_recipe("[task\nkind=")
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe("no-such-recipe")


# --- schedule and masks ----------------------------------------------------------------------


def test_cubic_schedule_at_given_steps():
    # Zhu & Gupta: s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, held between updates every 10 steps.
    kw = dict(initial=0.0, final=0.9, start=10, end=110, every=10)
    assert cubic_sparsity(9, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    assert cubic_sparsity(35, **kw) == pytest.approx(0.9 * (1 - 0.8 ** 3))  # last update at 30
    assert cubic_sparsity(60, **kw) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert cubic_sparsity(110, **kw) == 0.9 and cubic_sparsity(10_000, **kw) == 0.9
    assert cubic_sparsity(10, initial=0.3, final=0.8, start=10, end=20, every=5) == pytest.approx(0.3)
    steps = [s for s in range(200) if is_update_step(s, 10, 105, 10)]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 105]
    values = [cubic_sparsity(s, **kw) for s in range(120)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_lr_schedule():
    assert lr_at(0, 1.0, 4, "constant", 100, 50) == pytest.approx(0.25)
    assert lr_at(30, 1.0, 4, "constant", 100, 50) == 1.0
    assert lr_at(30, 1.0, 4, "decay-after-pruning", 100, 50) == 1.0
    assert lr_at(75, 1.0, 4, "decay-after-pruning", 100, 50) == pytest.approx(0.5)
    assert lr_at(52, 1.0, 4, "linear", 100, 50) == pytest.approx(0.5)


def _linears(seed=0, shapes=((16, 8), (32, 16), (8, 32))):
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.nn.Parameter(torch.randn(*s, generator=g)) for i, s in enumerate(shapes)}


@pytest.mark.parametrize("scope", ["per-layer", "global"])
@pytest.mark.parametrize("block", [(1, 1), (4, 1)])
def test_masks_reach_target_and_survive_optimiser_steps(scope, block):
    params = _linears()
    masks = MaskSet(params, block, scope)
    opt = torch.optim.AdamW(params.values(), lr=0.1, weight_decay=0.1)
    R, C = block
    for sparsity in (0.3, 0.6, 0.75):
        masks.update(sparsity)
        for _ in range(3):
            loss = sum((p ** 2).sum() - p.sum() for p in params.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            masks.apply()
        zero = {n: (p == 0) for n, p in params.items()}
        for n, m in masks.masks.items():
            assert bool(zero[n][~m].all()), "a pruned weight moved off zero"
            assert not bool(zero[n][m].any())
        units = {n: p.numel() // (R * C) for n, p in params.items()}
        if scope == "per-layer":
            for n, p in params.items():
                assert int(zero[n].sum()) == round(sparsity * units[n]) * R * C
        else:
            total = sum(units.values())
            assert sum(int(z.sum()) for z in zero.values()) == round(sparsity * total) * R * C
        if block == (4, 1):
            for n, p in params.items():
                blocks = zero[n].reshape(p.shape[0] // 4, 4, p.shape[1])
                assert bool((blocks.all(1) | ~blocks.any(1)).all()), "zeros not in whole 4x1 blocks"
    assert masks.sparsity() == pytest.approx(0.75, abs=0.02)


# --- losses against a hand computation -------------------------------------------------------


def test_losses_match_numpy():
    rng = np.random.default_rng(0)
    B, T, H = 3, 5, 4
    s, t = rng.normal(size=(2, B, T, H)).astype(np.float64)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    ps = (s * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pt = (t * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    cos = np.sum(ps * pt, 1) / np.linalg.norm(ps, axis=1) / np.linalg.norm(pt, axis=1)
    S, Tt, M = torch.tensor(s), torch.tensor(t), torch.tensor(mask)
    ms, mt = distill.mean_pool(S, M), distill.mean_pool(Tt, M)
    assert float(distill.pooled_cosine(ms, mt)) == pytest.approx(np.mean(1 - cos), rel=1e-9)
    assert float(distill.pooled_mse(ms, mt)) == pytest.approx(np.mean((ps - pt) ** 2), rel=1e-9)

    # hidden states: student 2 layers (3 states), teacher 4 layers (5 states): pairs (0,0) (1,2) (2,4)
    hs = rng.normal(size=(3, B, T, H))
    ht = rng.normal(size=(5, B, T, H))
    assert distill.layer_map(2, 4) == [(0, 0), (1, 2), (2, 4)]
    want = np.mean([((hs[a] - ht[b]) ** 2).mean(-1)[mask == 1].mean() for a, b in [(0, 0), (1, 2), (2, 4)]])
    got = distill.hidden_mse(tuple(torch.tensor(x) for x in hs), tuple(torch.tensor(x) for x in ht), M)
    assert float(got) == pytest.approx(want, rel=1e-9)

    zs, zt = rng.normal(size=(2, B, 3))
    y = np.array([0, 2, 1])
    T_, hard = 2.5, 0.7

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    p_t = np.exp(log_softmax(zt / T_))
    kl = np.sum(p_t * (np.log(p_t) - log_softmax(zs / T_))) / B * T_ ** 2
    ce = -np.mean(log_softmax(zs)[np.arange(B), y])
    got = distill.kd_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), T_, hard)
    assert float(got) == pytest.approx(hard * kl + (1 - hard) * ce, rel=1e-9)


def test_batch_order_is_a_function_of_step():
    lengths = np.arange(50) % 7
    a, b = BatchOrder(lengths, 8, 1), BatchOrder(lengths, 8, 1)
    seen = np.concatenate([a(s) for s in range(7)])
    assert sorted(seen.tolist()) == list(range(50))  # one epoch covers every row once
    assert all(np.array_equal(a(s), b(s)) for s in (9, 3, 20, 0))
    assert not np.array_equal(np.concatenate([a(s) for s in range(7)]),
                              np.concatenate([a(s) for s in range(7, 14)]))


# --- end to end ------------------------------------------------------------------------------


def test_student_layers_start_from_kept_teacher_layers(tiny_teacher):
    teacher = distill.load_teacher(tiny_teacher, "embeddings")
    student = distill.make_student(teacher, (0, 3), 0.0)
    assert student.config.num_hidden_layers == 2
    for j, i in enumerate((0, 3)):
        for (ns, ps), (nt, pt) in zip(student.encoder.layer[j].named_parameters(),
                                      teacher.encoder.layer[i].named_parameters()):
            assert ns == nt and torch.equal(ps, pt)
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)


def _load_state(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_tiny_embedding_run_output_loads_and_matches_transformers(tiny_teacher, tmp_path):
    import sparsebert
    from transformers import BertModel

    recipe = parse_recipe(EMB_RECIPE.replace("[task]", "[student]\nlayers = [0, 2, 3]\n[task]"))
    texts = _texts()
    out = tmp_path / "student"
    summary = train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=out, texts=texts, progress=False)
    assert summary["finished"] and summary["step"] == 24
    assert summary["loss_last_50"] is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    assert (out / "recipe.toml").read_text() == recipe.text
    assert not (out / "checkpoint").exists()
    state = _load_state(out)
    names = [n for n in state if ".encoder.layer." in "." + n and n.endswith("dense.weight")
             or n.endswith(("query.weight", "key.weight", "value.weight"))]
    assert len(names) == 18
    for n in names:  # per-layer scope: every linear at the target, as exact zeros
        w = state[n]
        assert np.count_nonzero(w == 0) == round(0.75 * w.size), n

    model = sparsebert.load(out)
    ref = BertModel.from_pretrained(str(out)).eval()
    batch = model.tokenize(texts[:6])
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(batch.input_ids),
                   attention_mask=torch.from_numpy(batch.attention_mask),
                   token_type_ids=torch.from_numpy(batch.token_type_ids)).last_hidden_state.numpy()
    got = model(batch.input_ids, batch.attention_mask, batch.token_type_ids).last_hidden_state
    assert got.shape == want.shape and got.dtype == np.float32
    keep = batch.attention_mask.astype(bool)
    assert float(np.abs(got[keep] - want[keep]).max()) <= 1e-5
    emb = sparsebert.pipeline("sentence-embedding", out)(texts[:2])
    assert np.asarray(emb).shape == (2, 32)


def test_tiny_run_lowers_the_loss(tiny_teacher, tmp_path):
    # Dense student of 2 layers, initialised from teacher layers 0 and 3: the loss must fall.
    recipe = parse_recipe(EMB_RECIPE.replace("[task]", "[student]\nlayers = [0, 3]\n[task]")
                          .replace("steps = 24", "steps = 60").replace("final_sparsity = 0.75", "final_sparsity = 0.0"))
    summary = train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "s",
                    texts=_texts(), progress=False)
    curve = [loss for _, loss in summary["loss_curve"]]
    assert np.mean(curve[-8:]) < 0.5 * np.mean(curve[:8])


def test_resume_equals_uninterrupted_run(tiny_teacher, tmp_path):
    recipe = parse_recipe(EMB_RECIPE.replace("[student]", "").replace("[task]", "[student]\ndropout = 0.1\n[task]"))
    texts = _texts()
    train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "a", texts=texts, progress=False)
    for chunk in (5, 6):  # stop at 5 (mid-ramp), then 11 (after the last mask update), then finish
        part = train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "b", texts=texts,
                     progress=False, max_steps=chunk)
        assert not part["finished"] and (tmp_path / "b" / "checkpoint" / "state.json").is_file()
    done = train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "b", texts=texts,
                 progress=False)
    assert done["finished"] and not (tmp_path / "b" / "checkpoint").exists()
    a, b = _load_state(tmp_path / "a"), _load_state(tmp_path / "b")
    assert sorted(a) == sorted(b)
    for n in a:
        assert np.array_equal(a[n], b[n]), n
    # A checkpoint is only resumed by the recipe that wrote it.
    train(recipe, init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "c", texts=texts,
          progress=False, max_steps=3)
    with pytest.raises(ConfigError, match="different recipe"):
        train(parse_recipe(EMB_RECIPE.replace("seed = 3", "seed = 4")), init=tiny_teacher,
              teacher=tiny_teacher, output=tmp_path / "c", texts=texts, progress=False)


CLS_TEACHER = """
[task]
kind = "classification"
labels = ["neg", "pos"]
[training]
lr = 3e-3
batch_size = 8
max_length = 16
epochs = 3
seed = 0
threads = 1
"""

CLS_STUDENT = """
[task]
kind = "classification"
labels = ["neg", "pos"]
[student]
layers = [1, 3]
[pruning]
final_sparsity = 0.5
start_epoch = 0
end_epoch = 1
update_every = 2
block = "4x1"
scope = "global"
[distillation]
temperature = 2.0
hardness = 0.5
hidden_weight = 0.1
[training]
lr = 1e-3
batch_size = 8
max_length = 16
epochs = 2
seed = 0
threads = 1
"""


def test_finetune_then_sparsify_classification(tiny_teacher, tmp_path):
    import sparsebert
    from sparsebert.train.evaluate import evaluate_model
    from transformers import BertForSequenceClassification

    texts = _texts(80, seed=1)
    labels = np.array([int("fox" in t or "dog" in t) for t in texts])
    teacher = tmp_path / "teacher"
    train(parse_recipe(CLS_TEACHER), init=tiny_teacher, output=teacher, texts=texts, labels=labels,
          progress=False)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)))
    out = tmp_path / "student"
    summary = train(parse_recipe(CLS_STUDENT), init=teacher, teacher=teacher, output=out, texts=texts,
                    labels=labels, progress=False)
    assert summary["total_steps"] == 20 and summary["encoder_linear_sparsity"] == pytest.approx(0.5, abs=0.01)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["id2label"] == {"0": "neg", "1": "pos"}

    clf = sparsebert.pipeline("text-classification", out, top_k=None, function_to_apply="none")
    ref = BertForSequenceClassification.from_pretrained(str(out)).eval()
    tok = sparsebert.load(out).tokenize(texts[:5])
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(tok.input_ids), attention_mask=torch.from_numpy(tok.attention_mask),
                   token_type_ids=torch.from_numpy(tok.token_type_ids)).logits.numpy()
    got = np.array([[{d["label"]: d["score"] for d in row}[n] for n in ("neg", "pos")] for row in clf(texts[:5])])
    assert np.abs(got - want).max() <= 1e-5
    metrics = evaluate_model(out, kind="classification", eval_data=data)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["examples"] == 80


# --- bad input -------------------------------------------------------------------------------


def test_bad_data_and_teacher_raise_typed_errors(tiny_teacher, tmp_path):
    from sparsebert.train.data import read_labelled, read_texts

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="no non-empty line"):
        read_texts(empty)
    with pytest.raises(InputError, match="cannot read"):
        read_texts(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{"text": "b"}\n')
    with pytest.raises(InputError, match="line 2"):
        read_labelled(bad)
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    recipe = parse_recipe(EMB_RECIPE)
    with pytest.raises(CheckpointError, match="not a BERT model"):
        train(recipe, init=tmp_path / "gpt", teacher=tmp_path / "gpt", output=tmp_path / "o", texts=["a b c"],
              progress=False)
    with pytest.raises(CheckpointError, match="no config.json"):
        train(recipe, init=tmp_path, teacher=tmp_path / "nothing", output=tmp_path / "o", texts=["a b c"],
              progress=False)
    with pytest.raises(ConfigError, match=r"\[5\] do not exist"):
        train(parse_recipe(EMB_RECIPE.replace("[task]", "[student]\nlayers = [0, 5]\n[task]")),
              init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "o", texts=["a b c"], progress=False)


def test_cli_reports_recipe_errors(tiny_teacher, tmp_path, capsys):
    from sparsebert.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text(EMB_RECIPE.replace("[training]", "[training]\nmomentum = 0.9"))
    data = tmp_path / "d.txt"
    data.write_text("\n".join(_texts(20)))
    code = main(["sparsify", str(recipe), "--teacher", str(tiny_teacher), "--data", str(data),
                 "--output", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and "momentum" in capsys.readouterr().err
    recipe.write_text(EMB_RECIPE.replace("steps = 24", "steps = 12"))
    code = main(["sparsify", str(recipe), "--teacher", str(tiny_teacher), "--data", str(data),
                 "--output", str(tmp_path / "o"), "--no-progress", "--eval-data", str(data)])
    assert code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert -1.0 <= metrics["cosine_to_teacher"] <= 1.0 and math.isfinite(metrics["top10_overlap"])


def test_cli_onnx_export_matches_the_folder(tiny_teacher, tmp_path):
    import sparsebert
    from sparsebert.cli import main

    pytest.importorskip("onnx")
    recipe = tmp_path / "r.toml"
    recipe.write_text(EMB_RECIPE.replace("steps = 24", "steps = 12"))
    data = tmp_path / "d.txt"
    data.write_text("\n".join(_texts(20)))
    code = main(["sparsify", str(recipe), "--teacher", str(tiny_teacher), "--data", str(data),
                 "--output", str(tmp_path / "o"), "--no-progress", "--onnx", str(tmp_path / "onnx")])
    assert code == 0
    texts = _texts(4, seed=5)
    a = sparsebert.load(tmp_path / "o").encode(texts)
    b = sparsebert.load(tmp_path / "onnx").encode(texts)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5


def test_sentiment_split_keeps_each_movie_on_one_side(tmp_path):
    from sparsebert.train.data import _split_movies, read_lee

    rows = [{"movie_name": f"m{i % 37}", "text": f" review  {i} ", "category": ("fresh", "rotten")[i % 2]}
            for i in range(400)]
    split = _split_movies(rows)
    assert sum(len(v) for v in split.values()) == 400 and all(split.values())
    for part in split.values():
        for r in part:
            assert r["label"] == (int(r["text"].split()[1]) % 2 == 0) and r["text"] == r["text"].strip()
    sides = _sides(split)
    assert all(len(s) == 1 for s in sides.values())
    assert _sides(_split_movies(list(reversed(rows)))) == sides  # the split depends on the movies only
    (tmp_path / "lee.cor").write_text("\n".join(f"doc {i}" for i in range(50)))
    sims = np.random.default_rng(0).random((50, 50))
    np.savetxt(tmp_path / "similarities0-1.txt", sims)
    docs, pairs = read_lee(tmp_path)
    assert len(docs) == 50 and pairs.shape == (1225,) and pairs[0] == pytest.approx(sims[0, 1])
    (tmp_path / "lee.cor").write_text("only one doc")
    with pytest.raises(InputError, match="expected 50 documents"):
        read_lee(tmp_path)


def _sides(split):
    sides = {}
    for name, part in split.items():
        for r in part:
            sides.setdefault(f"m{int(r['text'].split()[1]) % 37}", set()).add(name)
    return sides
