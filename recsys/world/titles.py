"""Item titles and search queries: words from the semantics, shuffled.

A title has the leaf's noun, one word per attribute (a random synonym each),
the brand, and filler words, in shuffled order. A query is how a shopper
types what they want: fewer attribute words, other synonyms, query filler,
never the brand.

Example::

    >>> import numpy as np
    >>> sem = {"leaf": np.array([0]), "colour": np.array([0]), "material": np.array([2]),
    ...        "style": np.array([1]), "pattern": np.array([0])}
    >>> t = make_titles(np.random.default_rng(0), sem, brand_ids=np.array([7]))[0]
    >>> "brand" in t and any(w in t.split() for w in ("dress", "gown", "frock"))
    True
"""

from __future__ import annotations

import numpy as np

from recsys.world.catalog import COLOURS, MATERIALS, PATTERNS, STYLES, leaf_nouns

_WORDS: dict[str, list[tuple[str, ...]]] = {
    "leaf": leaf_nouns(),
    "colour": [words for _, _, words in COLOURS],
    "material": list(MATERIALS),
    "style": list(STYLES),
    "pattern": list(PATTERNS),
}
TITLE_FILLER = ("new", "hot", "sale", "2024", "genuine", "official", "free", "shipping", "premium", "quality", "gift", "trendy")
QUERY_FILLER = ("buy", "cheap", "best", "for", "women", "men", "online", "deal", "near", "me")
_SYLLABLES = ("ka", "lo", "mi", "zu", "ren", "tor", "vi", "sa", "no", "qu", "el", "ix")


def brand_name(brand_id: int) -> str:
    """A pronounceable, unique brand word for an ID (base-12 syllables)."""
    parts = []
    b = int(brand_id)
    while True:
        parts.append(_SYLLABLES[b % len(_SYLLABLES)])
        b //= len(_SYLLABLES)
        if b == 0:
            break
    return "brand" + "".join(parts)


def _words(rng: np.random.Generator, sem: dict[str, np.ndarray], keep: float) -> list[list[str]]:
    n = len(sem["leaf"])
    rows: list[list[str]] = [[] for _ in range(n)]
    for name, table in _WORDS.items():
        values = np.asarray(sem[name])
        picks = rng.integers(0, 3, n)
        kept = rng.random(n) < (1.0 if name == "leaf" else keep)
        for i in np.flatnonzero(kept):
            syn = table[values[i]]
            rows[i].append(syn[picks[i] % len(syn)])
    return rows


def make_titles(rng: np.random.Generator, sem: dict[str, np.ndarray], brand_ids: np.ndarray) -> list[str]:
    """One title per item: noun, attribute words, brand, 1-3 fillers, shuffled."""
    rows = _words(rng, sem, keep=0.9)
    n_fill = rng.integers(1, 4, len(rows))
    fill = rng.integers(0, len(TITLE_FILLER), (len(rows), 3))
    out = []
    for i, words in enumerate(rows):
        words = words + [brand_name(brand_ids[i])] + [TITLE_FILLER[j] for j in fill[i, : n_fill[i]]]
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def make_queries(rng: np.random.Generator, sem: dict[str, np.ndarray]) -> list[str]:
    """One search query per row: noun, some attribute words, query filler, shuffled."""
    rows = _words(rng, sem, keep=0.7)
    n_fill = rng.integers(0, 3, len(rows))
    fill = rng.integers(0, len(QUERY_FILLER), (len(rows), 2))
    out = []
    for i, words in enumerate(rows):
        words = words + [QUERY_FILLER[j] for j in fill[i, : n_fill[i]]]
        rng.shuffle(words)
        out.append(" ".join(words))
    return out
