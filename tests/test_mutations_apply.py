"""Every mutation in tests/mutate_kernels.py still finds its text, exactly once, in the kernel file it
edits. The harness reports a stale mutation only when someone runs it (minutes per mutation), so a
refactor could silently turn one into a no-op: int8_pack_swaps_quad_bytes stopped applying when the
pack loop's variable was renamed, and nothing noticed until the list was read again."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutate_kernels  # noqa: E402


@pytest.mark.parametrize("name", sorted(mutate_kernels.MUTATIONS))
def test_mutation_text_occurs_once(name):
    spec = mutate_kernels.MUTATIONS[name]
    source = (mutate_kernels.ROOT / "kernels" / spec[0]).read_text()
    assert source.count(spec[1]) == 1, f"{name}: its text occurs {source.count(spec[1])} times in kernels/{spec[0]}"
