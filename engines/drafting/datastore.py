"""REST's datastore: a suffix array over token ids of retrieval text, in the target's tokenizer.

REST (He et al. 2024, "REST: Retrieval-Based Speculative Decoding", arXiv 2311.08252, section 3.1) keeps a corpus
as one token array and its suffix array, so the occurrences of any token string are one contiguous range of the
sorted suffixes, found by binary search. Here the text is the shipped public-domain corpus (assets/corpus) and,
where they are on disk, the train split of the target's own chat answers (engines/training/chat_data.py writes
them); each document or conversation is one segment, segments apart by a separator (-1) that no query contains,
so no continuation runs from one into the next.

A datastore is built once per (tokenizer, sources) and cached under CACHE_DIR/datastore/<digest>/, the digest
taken over the tokenizer and every source's bytes; the folder is written beside its place and renamed into it,
so a reader never sees half of one. meta.json says what is in it: each source with its token count, the size in
bytes, the build time.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engines.models import presets

SEPARATOR = -1
PAST_END = -2   # what a suffix reads past the array's end: below every token and the separator, as sorting puts it
CORPUS_DIR = presets.ASSETS / "corpus"
STORE_DIR = presets.CACHE_DIR / "datastore"


@dataclass(frozen=True)
class Source:
    """A named body of text: its fingerprint (sha256 of its bytes) and how to turn it into token segments."""
    name: str
    fingerprint: str
    segments: Callable[[object], list[list[int]]] = field(compare=False)   # tokenizer -> token id lists


@dataclass
class Datastore:
    tokens: np.ndarray   # int32: every segment's ids, each followed by SEPARATOR
    order: np.ndarray    # int32: the suffix array, start positions of the suffixes in sorted order
    first: np.ndarray    # int32: tokens[order], the first column of the sorted suffixes
    meta: dict           # name, sources [{name, tokens}], tokens, bytes, build_s


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def paragraphs(text: str) -> str:
    """Hard-wrapped book lines as whitespace-normalised paragraphs, one blank line apart: the layout a chat answer
    has, so the two tokenize alike."""
    blocks = (" ".join(b.split()) for b in text.replace("\r\n", "\n").split("\n\n"))
    return "\n\n".join(b for b in blocks if b)


def text_source(path: Path) -> Source:
    """One text file as one segment (Latin-1 where it is not UTF-8, as one shipped book is)."""
    return read_source(str(path), *stamp(path), "text")


def shard_source(path: Path) -> Source:
    """One chat-data shard: the ids of each train-split conversation as the target saw and wrote them (the held-out
    split stays unseen by every drafter)."""
    return read_source(str(path), *stamp(path), "shard")


def stamp(path: Path) -> tuple[int, int]:
    st = Path(path).stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=256)
def read_source(path: str, mtime_ns: int, size: int, kind: str) -> Source:
    """A file read and hashed once per version of it (its time and size): every run starts a drafter, and hashing
    the corpus each time would be in every run's wall time."""
    return (read_text if kind == "text" else read_shard)(Path(path))


def read_text(path: Path) -> Source:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return Source(Path(path).name, sha(raw),
                  lambda tok: [tok(paragraphs(text), add_special_tokens=False)["input_ids"]])


def read_shard(path: Path) -> Source:
    raw = Path(path).read_bytes()
    rows = presets.parse_chat_shard(raw)
    return Source(Path(path).name, sha(raw),
                  lambda tok: [r["ids"] for r in rows if r.get("split", "train") == "train"])


def default_sources(target_name: str) -> list[Source]:
    """The shipped corpus's texts, then the target's chat shards where they exist."""
    texts = [text_source(p) for p in sorted(CORPUS_DIR.glob("*.txt"))]
    chat = presets.chat_data_dir(target_name)
    return texts + [shard_source(p) for p in presets.chat_shards(chat)]


TOKENIZER_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # serialising one takes ~0.1 s


def tokenizer_digest(tok) -> str:
    if tok not in TOKENIZER_DIGESTS:
        backend = getattr(tok, "backend_tokenizer", None)
        spec = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
        TOKENIZER_DIGESTS[tok] = sha(spec.encode("utf-8"))
    return TOKENIZER_DIGESTS[tok]


def digest(tok, sources: Sequence[Source]) -> str:
    parts = [tokenizer_digest(tok)] + [f"{s.name}:{s.fingerprint}" for s in sources]
    return sha("\n".join(parts).encode("utf-8"))[:16]


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """The start positions of all suffixes in sorted order (reading past the end as smaller than anything), by
    prefix doubling: rank each suffix by its first k tokens, then by its first 2k as (rank[i], rank[i + k]), until
    every rank differs. O(n log^2 n) in numpy sorts; a second for a million tokens."""
    n = len(tokens)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64) + 1   # 0 is kept for "past the end"
    k = 1
    while True:
        second = np.zeros(n, dtype=np.int64)
        if k < n:
            second[:n - k] = rank[k:]
        key = rank * (n + 2) + second
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        fresh = np.empty(n, dtype=np.int64)
        fresh[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]])
        rank = fresh
        if rank.max() == n or k >= n:
            return order.astype(np.int32)
        k *= 2


def column(ds: Datastore, starts: np.ndarray, offset: int) -> np.ndarray:
    """The token `offset` places into each suffix starting at `starts` (PAST_END past the array's end)."""
    at = starts.astype(np.int64) + offset
    inside = at < len(ds.tokens)
    return np.where(inside, ds.tokens[np.minimum(at, len(ds.tokens) - 1)], PAST_END)


def find(ds: Datastore, query: Sequence[int]) -> tuple[int, int]:
    """[lo, hi): the suffix array's range of suffixes that begin with `query`. The suffixes sharing query[:j] are
    contiguous and sorted by their token j, so each token narrows the range by two binary searches."""
    if not query:
        return 0, len(ds.order)
    lo = int(np.searchsorted(ds.first, query[0], "left"))
    hi = int(np.searchsorted(ds.first, query[0], "right"))
    for j, t in enumerate(query[1:], 1):
        if lo >= hi:
            break
        col = column(ds, ds.order[lo:hi], j)
        lo, hi = lo + int(np.searchsorted(col, t, "left")), lo + int(np.searchsorted(col, t, "right"))
    return lo, hi


def build(tok, sources: Sequence[Source], name: str) -> Datastore:
    start = time.perf_counter()
    parts, counts = [], []
    for s in sources:
        segs = s.segments(tok)
        counts.append({"name": s.name, "tokens": sum(len(x) for x in segs)})
        parts += [np.asarray(x + [SEPARATOR], dtype=np.int32) for x in segs]
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    order = suffix_array(tokens)
    meta = {"name": name, "sources": counts, "tokens": int(len(tokens)),
            "bytes": int(tokens.nbytes + order.nbytes), "build_s": round(time.perf_counter() - start, 3)}
    return Datastore(tokens, order, tokens[order], meta)


def save(ds: Datastore, folder: Path) -> None:
    """Written into a temporary folder beside `folder`, then renamed into place; a store another process put
    there first wins (both were built from the same sources)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)   # mkdtemp's folder is private; the datastore is not
    np.save(tmp / "tokens.npy", ds.tokens)
    np.save(tmp / "order.npy", ds.order)
    (tmp / "meta.json").write_text(json.dumps(ds.meta, indent=1))
    try:
        os.replace(tmp, folder)
    except OSError:   # already there
        shutil.rmtree(tmp, ignore_errors=True)


LOADED: dict[Path, Datastore] = {}   # the process's datastores by folder: one load per process, shared by runs


def datastore(tok, sources: Sequence[Source], cache_dir: Path = STORE_DIR, label: str = "corpus") -> Datastore:
    """The datastore of these sources in this tokenizer: from memory, from its cached folder, or built and cached."""
    name = f"{label}-{digest(tok, sources)}"
    folder = Path(cache_dir) / name
    if folder in LOADED:
        return LOADED[folder]
    if not (folder / "meta.json").exists():
        save(build(tok, sources, name), folder)
    tokens, order = np.load(folder / "tokens.npy"), np.load(folder / "order.npy")
    ds = Datastore(tokens, order, tokens[order], json.loads((folder / "meta.json").read_text()))
    LOADED[folder] = ds
    return ds


def target_datastore(tok, target_name: str, cache_dir: Path = STORE_DIR) -> Datastore:
    """The default datastore of a target: the shipped corpus, and its chat answers where they are on disk."""
    sources = default_sources(target_name)
    chat = any(s.name.startswith("shard-") for s in sources)
    return datastore(tok, sources, cache_dir, "corpus+chat" if chat else "corpus")
