"""The hidden semantics of the world: category tree, attributes, item vectors.

Each item is a leaf category plus four attributes (colour, material, style,
pattern). Its hidden semantic vector mixes the leaf's vector, the attribute
vectors and per-item noise; images and titles are rendered from the same
discrete semantics, so a content encoder can recover most of the vector.

Notation: ``N`` items, ``S`` semantic dimensions.

Example::

    >>> import numpy as np
    >>> tree = CategoryTree.build(np.random.default_rng(0))
    >>> tree.n_leaves, tree.leaf_vectors.shape
    (25, (25, 32))
    >>> attrs = tree.sample_attributes(np.random.default_rng(1), np.array([0, 0, 7]))
    >>> sorted(attrs)
    ['colour', 'material', 'pattern', 'style']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEMANTIC_DIM = 32  # S

# Five top-level categories of five leaves each: (noun synonyms per leaf).
TOP_CATEGORIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "clothing": (
        ("dress", "gown", "frock"),
        ("shirt", "blouse", "top"),
        ("coat", "jacket", "parka"),
        ("skirt", "kilt", "miniskirt"),
        ("trousers", "pants", "slacks"),
    ),
    "footwear": (
        ("sneakers", "trainers", "runners"),
        ("boots", "booties", "wellies"),
        ("sandals", "flipflops", "slides"),
        ("heels", "pumps", "stilettos"),
        ("loafers", "moccasins", "flats"),
    ),
    "bags": (
        ("handbag", "purse", "clutch"),
        ("backpack", "rucksack", "knapsack"),
        ("wallet", "billfold", "cardholder"),
        ("tote", "shopper", "carryall"),
        ("suitcase", "luggage", "trolley"),
    ),
    "home": (
        ("lamp", "lantern", "sconce"),
        ("cushion", "pillow", "bolster"),
        ("vase", "urn", "jar"),
        ("rug", "carpet", "mat"),
        ("mug", "cup", "tumbler"),
    ),
    "beauty": (
        ("lipstick", "lipcolor", "lipgloss"),
        ("perfume", "fragrance", "cologne"),
        ("serum", "essence", "ampoule"),
        ("mascara", "lashliner", "lashcolor"),
        ("cream", "moisturizer", "lotion"),
    ),
}

# Attribute values with their word synonyms. Colours also carry an RGB value.
COLOURS: tuple[tuple[str, tuple[int, int, int], tuple[str, ...]], ...] = (
    ("red", (210, 40, 40), ("red", "crimson", "scarlet")),
    ("blue", (40, 70, 200), ("blue", "navy", "azure")),
    ("green", (40, 160, 60), ("green", "emerald", "olive")),
    ("yellow", (230, 200, 40), ("yellow", "golden", "lemon")),
    ("black", (25, 25, 25), ("black", "ebony", "jet")),
    ("white", (235, 235, 235), ("white", "ivory", "snow")),
    ("pink", (235, 120, 170), ("pink", "rose", "blush")),
    ("purple", (120, 50, 160), ("purple", "violet", "lilac")),
    ("orange", (240, 130, 30), ("orange", "amber", "tangerine")),
    ("brown", (120, 75, 40), ("brown", "chocolate", "tan")),
)
MATERIALS: tuple[tuple[str, ...], ...] = (
    ("cotton", "cottony"),
    ("leather", "leathery", "hide"),
    ("silk", "silky", "satin"),
    ("wool", "woolen", "knit"),
    ("plastic", "acrylic", "vinyl"),
    ("metal", "metallic", "steel"),
)
STYLES: tuple[tuple[str, ...], ...] = (
    ("casual", "everyday", "relaxed"),
    ("formal", "elegant", "classy"),
    ("sporty", "athletic", "active"),
    ("vintage", "retro", "classic"),
    ("minimalist", "simple", "clean"),
    ("boho", "bohemian", "hippie"),
)
PATTERNS: tuple[tuple[str, ...], ...] = (
    ("plain", "solid", "plaincolor"),
    ("striped", "stripes", "pinstripe"),
    ("dotted", "polka", "spotted"),
    ("checked", "plaid", "gingham"),
    ("gradient", "ombre", "fade"),
)
ATTRIBUTES: dict[str, int] = {
    "colour": len(COLOURS),
    "material": len(MATERIALS),
    "style": len(STYLES),
    "pattern": len(PATTERNS),
}
# How much each part weighs in the hidden semantic vector (before L2 norm).
SEMANTIC_WEIGHTS: dict[str, float] = {
    "leaf": 1.0,
    "colour": 0.6,
    "material": 0.35,
    "style": 0.45,
    "pattern": 0.35,
    "noise": 0.25,
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass(frozen=True)
class CategoryTree:
    """The leaf categories and attribute values, each with a hidden vector.

    Args:
        leaf_vectors (np.ndarray): (n_leaves, S) unit vectors; leaves of one
            top category share a component.
        attribute_vectors (dict[str, np.ndarray]): per attribute, (n_values, S).
        attribute_priors (dict[str, np.ndarray]): per attribute,
            (n_leaves, n_values) probabilities of each value within a leaf.
    """

    leaf_vectors: np.ndarray
    attribute_vectors: dict[str, np.ndarray]
    attribute_priors: dict[str, np.ndarray]

    @property
    def n_leaves(self) -> int:
        return self.leaf_vectors.shape[0]

    @staticmethod
    def build(rng: np.random.Generator) -> "CategoryTree":
        n_top = len(TOP_CATEGORIES)
        per_top = len(next(iter(TOP_CATEGORIES.values())))
        top = rng.standard_normal((n_top, SEMANTIC_DIM))
        leaf = np.repeat(top, per_top, axis=0) + 0.7 * rng.standard_normal((n_top * per_top, SEMANTIC_DIM))
        attribute_vectors = {
            name: _unit(rng.standard_normal((n, SEMANTIC_DIM))).astype(np.float32)
            for name, n in ATTRIBUTES.items()
        }
        # Each leaf favours some values (e.g. leather boots, silk dresses).
        attribute_priors = {
            name: rng.dirichlet(np.full(n, 0.6), size=n_top * per_top)
            for name, n in ATTRIBUTES.items()
        }
        return CategoryTree(_unit(leaf).astype(np.float32), attribute_vectors, attribute_priors)

    def sample_attributes(self, rng: np.random.Generator, leaves: np.ndarray) -> dict[str, np.ndarray]:
        """Draws each attribute from its per-leaf prior: int arrays of shape (N,)."""
        out = {}
        for name, prior in self.attribute_priors.items():
            cdf = np.cumsum(prior[leaves], axis=1)
            u = rng.random((len(leaves), 1))
            out[name] = np.minimum((u > cdf).sum(axis=1), prior.shape[1] - 1).astype(np.int8)
        return out

    def semantic_vectors(
        self, leaves: np.ndarray, attributes: dict[str, np.ndarray], noise: np.ndarray
    ) -> np.ndarray:
        """Hidden unit semantic vectors, float32 of shape (N, S).

        ``noise`` is a (N, S) standard normal draw: the per-item part no
        category or attribute explains.
        """
        w = SEMANTIC_WEIGHTS
        v = w["leaf"] * self.leaf_vectors[leaves]
        for name, values in attributes.items():
            v = v + w[name] * self.attribute_vectors[name][values]
        v = v + w["noise"] * noise / np.sqrt(SEMANTIC_DIM)
        return _unit(v).astype(np.float32)


def leaf_nouns() -> list[tuple[str, ...]]:
    """Noun synonyms per leaf, in leaf-ID order."""
    return [nouns for leaves in TOP_CATEGORIES.values() for nouns in leaves]
