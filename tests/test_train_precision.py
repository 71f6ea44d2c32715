"""sparsebert.train with `[training] precision = "bf16"`: the forwards run under bf16 autocast, the
master weights, optimiser and loss stay fp32, fake-quantized steps stay fp32, and a resumed run
still ends bitwise where an uninterrupted one does.

Tiny seeded BERTs and a handful of steps, as in test_train.py, whose recipe and fixtures are reused.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import EMB_RECIPE, _load_state, _texts, tiny_teacher  # noqa: E402,F401

from sparsebert.errors import ConfigError  # noqa: E402
from sparsebert.train.recipe import parse_recipe  # noqa: E402
from sparsebert.train.trainer import _float32, _warn_bf16, train  # noqa: E402

BF16 = EMB_RECIPE.replace("threads = 1", "threads = 1\nprecision = \"bf16\"")


def _run(recipe_text, teacher, out, **kw):
    with warnings.catch_warnings():  # these tests check numbers, not whether this CPU has native bf16
        warnings.filterwarnings("ignore", message=r"\[training\] precision")
        return train(parse_recipe(recipe_text), init=teacher, teacher=teacher, output=out, texts=_texts(),
                     progress=False, **kw)


def test_precision_key_parses_and_names_a_bad_value():
    assert parse_recipe(EMB_RECIPE).training.precision == "fp32"
    assert parse_recipe(BF16).training.precision == "bf16"
    with pytest.raises(ConfigError) as err:
        parse_recipe(BF16.replace("\"bf16\"", "\"fp16\""))
    assert "precision = 'fp16'" in str(err.value) and "bf16" in str(err.value)


def test_warning_only_without_native_bf16():
    with pytest.warns(RuntimeWarning, match="without AVX512-BF16"):
        _warn_bf16(["fpu", "avx2", "avx512f"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_bf16(["avx2", "avx512bf16"])
        _warn_bf16(["amx-bf16", "amx-tile"])


def test_float32_converts_every_output_tensor():
    from transformers.modeling_outputs import BaseModelOutput

    out = BaseModelOutput(last_hidden_state=torch.ones(2, 3, dtype=torch.bfloat16),
                          hidden_states=(torch.ones(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3)))
    got = _float32(out)
    assert got.last_hidden_state.dtype == torch.float32
    assert [h.dtype for h in got.hidden_states] == [torch.float32, torch.float32]
    assert _float32(None) is None


def test_bf16_run_is_close_to_fp32_but_not_equal(tiny_teacher, tmp_path):
    def student(text):  # two of the four layers, dense: a loss to lower, and no mask to flip
        return text.replace("final_sparsity = 0.75", "final_sparsity = 0.0").replace(
            "[task]", "[student]\nlayers = [0, 3]\n[task]")

    a = _run(student(EMB_RECIPE), tiny_teacher, tmp_path / "fp32")
    b = _run(student(BF16), tiny_teacher, tmp_path / "bf16")
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    wa, wb = _load_state(tmp_path / "fp32"), _load_state(tmp_path / "bf16")
    assert all(wb[n].dtype == np.float32 for n in wb)  # fp32 master weights
    assert any(not np.array_equal(wa[n], wb[n]) for n in wa), "bf16 autocast had no effect"
    # Adam turns a ~2^-8 relative change of a gradient near zero into a different full step, so
    # the weights are not compared element by element: the runs must train alike.
    la = np.array([x for _, x in a["loss_curve"]])
    lb = np.array([x for _, x in b["loss_curve"]])
    assert abs(la[0] - lb[0]) <= 0.01 * la[0]  # the same weights, forward in bf16
    assert lb[-4:].mean() < 0.5 * lb[:4].mean()
    assert abs(lb[-4:].mean() - la[-4:].mean()) <= 0.02 * la[-4:].mean()


def test_bf16_resume_equals_uninterrupted_run(tiny_teacher, tmp_path):
    _run(BF16, tiny_teacher, tmp_path / "a")
    for chunk in (5, 6):
        part = _run(BF16, tiny_teacher, tmp_path / "b", max_steps=chunk)
        assert not part["finished"]
    assert _run(BF16, tiny_teacher, tmp_path / "b")["finished"]
    a, b = _load_state(tmp_path / "a"), _load_state(tmp_path / "b")
    for n in a:
        assert np.array_equal(a[n], b[n]), n


def test_fake_quantized_steps_stay_fp32(tiny_teacher, tmp_path):
    # Fake quantization from step 0: a bf16 recipe must train exactly as its fp32 twin.
    fq = "\n[quantization]\nfake_quant_start = 0\n"
    _run(EMB_RECIPE + fq, tiny_teacher, tmp_path / "fp32")
    _run(BF16 + fq, tiny_teacher, tmp_path / "bf16")
    a, b = _load_state(tmp_path / "fp32"), _load_state(tmp_path / "bf16")
    for n in a:
        assert np.array_equal(a[n], b[n]), n
    assert json.loads((tmp_path / "bf16" / "train.json").read_text())["precision"] == "bf16"
