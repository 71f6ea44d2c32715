"""Interruption as the README promises: a run stopped by Ctrl-C / SIGTERM at any point of a step, or
killed after a periodic checkpoint, resumes to the same weights, bit for bit, as a run never stopped.

Signals are sent by the process to itself from inside the step (after the mask update, after the
backward pass, after the optimiser step, after the mask application, i.e. before the step counter
moves); a crash is an exception no handler saves on. Tiny seeded BERT, 24 steps.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import EMB_RECIPE, _load_state, _texts, tiny_teacher  # noqa: E402,F401

from sparsebert.train.gmp import MaskSet  # noqa: E402
from sparsebert.train.recipe import parse_recipe  # noqa: E402
from sparsebert.train.trainer import train  # noqa: E402

# dropout 0.1 so that a step replayed with other noise would show; mask updates at 2, 7, 12
RECIPE = EMB_RECIPE.replace("[task]", "[student]\ndropout = 0.1\n[task]")
LEVERS = (RECIPE.replace("final_sparsity = 0.75", "final_sparsity = 0.75\ninitial_sparsity = 0.25\n"
                         "block = \"1x4\"\ninit_method = \"wanda\"\nscore = \"wanda\"\ncalibration_texts = 20")
          .replace("dropout = 0.1", "dropout = 0.1\nfreeze_embeddings = true")
          .replace("decay-after-pruning", "restart-per-update")
          .replace("threads = 1", "threads = 1\n[quantization]\nfake_quant_start = 9"))


def _run(recipe_text, teacher, out, **kw):
    return train(parse_recipe(recipe_text), init=teacher, teacher=teacher, output=out, texts=_texts(),
                 progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tiny_teacher, tmp_path_factory):
    """Final weights of uninterrupted runs, by recipe."""
    out = {}
    for name, text in (("plain", RECIPE), ("levers", LEVERS)):
        folder = tmp_path_factory.mktemp(name)
        _run(text, tiny_teacher, folder / "run")
        out[name] = _load_state(folder / "run")
    return out


def _assert_same(reference_state, folder):
    got = _load_state(folder)
    assert sorted(got) == sorted(reference_state)
    for n in got:
        assert np.array_equal(got[n], reference_state[n]), n


def _fire_on_call(monkeypatch, owner, attr, call, action):
    """Wrap owner.attr so that its `call`-th call (1-based) runs, then runs `action` once."""
    original = getattr(owner, attr)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        count["n"] += 1
        if count["n"] == call:
            action()
        return result

    monkeypatch.setattr(owner, attr, wrapper)
    return count


def _signal(sig):
    return lambda: os.kill(os.getpid(), sig)


# (what to wrap, which call, the step it falls in). MaskSet.apply runs once a step and once more
# inside the update at step 2, so its 7th call closes step 5.
POINTS = {
    "after the mask update": (MaskSet, "update", 2, 7),
    "after backward": (torch.Tensor, "backward", 6, 5),
    "after the optimiser step": (torch.optim.AdamW, "step", 6, 5),
    "after the mask application": (MaskSet, "apply", 7, 5),
}


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_at_any_point_of_a_step_resumes_bitwise(point, sig, tiny_teacher, reference, tmp_path, monkeypatch):
    owner, attr, call, step = POINTS[point]
    if sig == signal.SIGINT and point not in ("after the optimiser step", "after the mask application"):
        pytest.skip("SIGINT takes the same path as SIGTERM; two points suffice")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        fired = _fire_on_call(m, owner, attr, call, _signal(sig))
        with pytest.raises(KeyboardInterrupt, match=signal.Signals(sig).name):
            _run(RECIPE, tiny_teacher, out)
        assert fired["n"] >= call
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    # the step the signal fell in was completed and saved under its own number
    assert state["step"] == step + 1 and len(state["history"]) == step + 1
    done = _run(RECIPE, tiny_teacher, out)
    assert done["finished"]
    _assert_same(reference["plain"], out)


class _PowerCut(Exception):
    pass


def _crash():
    raise _PowerCut()


def test_periodic_checkpoint_survives_a_crash(tiny_teacher, reference, tmp_path, monkeypatch):
    # checkpoint_minutes tiny: a checkpoint after every step. A crash inside step 5 (after its
    # optimiser step, no save on this path) leaves the checkpoint of step 5's start; resuming from it
    # ends bitwise where the uninterrupted run ended.
    often = RECIPE.replace("threads = 1", "threads = 1\ncheckpoint_minutes = 1e-9")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _fire_on_call(m, torch.optim.AdamW, "step", 6, _crash)
        with pytest.raises(_PowerCut):
            _run(often, tiny_teacher, out)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 5
    done = _run(often, tiny_teacher, out)
    assert done["finished"] and not (out / "checkpoint").exists()
    _assert_same(reference["plain"], out)
    # the default period (3 minutes) writes nothing in a run this short: the checkpoint above was
    # the periodic one
    with monkeypatch.context() as m:
        _fire_on_call(m, torch.optim.AdamW, "step", 6, _crash)
        with pytest.raises(_PowerCut):
            _run(RECIPE, tiny_teacher, tmp_path / "rare")
    assert not (tmp_path / "rare" / "checkpoint").exists()


def test_resume_with_every_lever_equals_uninterrupted(tiny_teacher, reference, tmp_path):
    # Wanda start and updates (calibration passes), LR restarts, frozen embeddings, 1x4 blocks,
    # fake quantization from step 9: stops at 3 (after the Wanda jump), 8 (before fake quant), 13.
    out = tmp_path / "run"
    for chunk in (3, 5, 5):
        part = _run(LEVERS, tiny_teacher, out, max_steps=chunk)
        assert not part["finished"]
    assert _run(LEVERS, tiny_teacher, out)["finished"]
    _assert_same(reference["levers"], out)
    zero = _load_state(out)["encoder.layer.2.attention.output.dense.weight"] == 0
    quads = zero.reshape(zero.shape[0], -1, 4)
    assert quads.all(-1).mean() == pytest.approx(0.75) and not (quads.any(-1) & ~quads.all(-1)).any()
