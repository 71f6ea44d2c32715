"""Real English sentences for benchmarks that need realistic lengths (serving, Ray, sweeps).

`sentences(n, seed=0)` returns n texts drawn, without replacement while the pool lasts, from two Debian
packages fetched with `apt-get download` + `dpkg -x` (no install, no root needed beyond apt's cache):
`wordnet-base` (~117k glosses with their usage examples: short definitions, 5-30 words) and `fortunes`
(~14k quotations and jokes, split on blank lines: 5-100 words). The packages are unpacked once into
`~/.cache/sparsebert-data` (or `$SPARSEBERT_DATA`), outside the repository: their text is not ours to
commit. Deterministic for a seed; the pool is ~130k texts, and larger n repeats it in a new shuffle.

Left out: any labelled data (the training data sets have their own fetchers), other languages, and a
fallback when apt is unavailable: the error says what to install.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGES = ("wordnet-base", "fortunes")


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEBERT_DATA", Path.home() / ".cache" / "sparsebert-data"))


def _unpacked(package: str) -> Path:
    """The package's files under the cache, fetched on first use."""
    root = cache_dir() / package
    if (root / ".complete").exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError(f"benchmarks/corpus.py needs apt-get and dpkg to fetch the Debian package "
                           f"{package!r}; or unpack it yourself into {root} and create {root}/.complete")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise RuntimeError(f"apt-get download {package} gave {debs}; run 'apt-get update' first")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    (root / ".complete").touch()
    return root


def _wordnet_glosses(root: Path) -> list[str]:
    texts = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / "usr/share/wordnet" / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the licence header lines start with two spaces
            gloss = line.split(" | ", 1)[1].strip()
            if gloss:
                texts.append(gloss)
    return texts


def _fortunes(root: Path) -> list[str]:
    texts = []
    folder = root / "usr/share/games/fortunes"
    for path in sorted(folder.iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat indexes and .u8 duplicates
        for chunk in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(chunk.split())
            if 3 <= len(text.split()) <= 200:
                texts.append(text)
    return texts


def pool() -> list[str]:
    """Every text of both packages, in a fixed order."""
    return _wordnet_glosses(_unpacked("wordnet-base")) + _fortunes(_unpacked("fortunes"))


def sentences(n: int, seed: int = 0) -> list[str]:
    """n real English texts, shuffled deterministically by seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    texts = pool()
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        batch = texts[:]
        rng.shuffle(batch)
        out.extend(batch[: n - len(out)])
    return out


if __name__ == "__main__":
    sample = sentences(100_000)
    words = sorted(len(t.split()) for t in sample)
    print(f"{len(pool())} texts in the pool; 100k sample words p50 {words[len(words) // 2]}, "
          f"p90 {words[9 * len(words) // 10]}, max {words[-1]}")
    print(sample[:3])
