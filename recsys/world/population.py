"""Items and users of the world: their observable IDs and hidden traits.

Items are numbered in creation order, so a new item always has a larger ID
than every older one, as in a production ID service.

Notation: ``N`` items, ``U`` users, ``S`` semantic dimensions, ``K`` interest
leaves per user.

Example::

    >>> import numpy as np
    >>> from recsys.world.catalog import CategoryTree
    >>> from recsys.world.config import PRESETS
    >>> cfg = PRESETS["tiny"]
    >>> tree = CategoryTree.build(np.random.default_rng(0))
    >>> items = Items.sample(np.random.default_rng(1), cfg, tree)
    >>> bool(np.all(np.diff(items.created_day) >= 0)), items.semantic.shape
    (True, (1500, 32))
    >>> users = Users.sample(np.random.default_rng(2), cfg, tree)
    >>> users.interest_leaves.shape
    (400, 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.world.catalog import ATTRIBUTES, SEMANTIC_DIM, CategoryTree, TOP_CATEGORIES
from recsys.world.config import WorldConfig

N_PRICE_BUCKETS = 10
N_AGE_BUCKETS = 7
N_GENDERS = 3  # 0 unknown, 1, 2
INTEREST_LEAVES = 3  # K
ZIPF_ITEMS = 1.05  # popularity exponent over items
ZIPF_USERS = 0.8  # activity exponent over users


def zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf weights ``1 / rank**exponent`` over a random ranking, float64 (n,), sum 1."""
    w = 1.0 / np.power(rng.permutation(n) + 1.0, exponent)
    return w / w.sum()


def sample_zipf_ids(rng: np.random.Generator, n_ids: int, size: int, exponent: float) -> np.ndarray:
    """IDs in [0, n_ids) drawn with Zipf-shaped frequencies."""
    cdf = np.cumsum(zipf_weights(rng, n_ids, exponent))
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), n_ids - 1)


@dataclass(frozen=True)
class Items:
    """All items: observable IDs plus hidden semantics, popularity and quality."""

    leaf: np.ndarray  # (N,) int16 leaf category = category_id
    attributes: dict[str, np.ndarray]  # each (N,) int8
    semantic: np.ndarray  # (N, S) float32 unit hidden vector
    created_day: np.ndarray  # (N,) int32, non-decreasing in item_id
    popularity: np.ndarray  # (N,) float32 Zipf weight (unnormalised)
    effect: np.ndarray  # (N,) float32 item click effect only an ID can learn
    shop: np.ndarray  # (N,) int32
    brand: np.ndarray  # (N,) int32
    price_bucket: np.ndarray  # (N,) int8

    @property
    def n(self) -> int:
        return self.leaf.shape[0]

    def semantics(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The discrete semantics images and titles are rendered from."""
        out = {"leaf": self.leaf[ids]}
        out.update({k: v[ids] for k, v in self.attributes.items()})
        return out

    @staticmethod
    def sample(rng: np.random.Generator, cfg: WorldConfig, tree: CategoryTree) -> "Items":
        n = cfg.n_items
        n_log = int(round(n * cfg.log_item_share))
        created = np.concatenate(
            [
                rng.integers(0, cfg.prewarm_days, n - n_log),
                rng.integers(cfg.first_day, cfg.last_day + 1, n_log),
            ]
        )
        created = np.sort(created).astype(np.int32)
        leaf_prior = rng.dirichlet(np.full(tree.n_leaves, 3.0))
        leaf = rng.choice(tree.n_leaves, size=n, p=leaf_prior).astype(np.int16)
        attributes = tree.sample_attributes(rng, leaf)
        noise = rng.standard_normal((n, SEMANTIC_DIM), dtype=np.float32)
        semantic = tree.semantic_vectors(leaf, attributes, noise)
        popularity = zipf_weights(rng, n, ZIPF_ITEMS).astype(np.float32) * n
        effect = rng.normal(0.0, 0.8, n).astype(np.float32)
        shop = sample_zipf_ids(rng, cfg.n_shops, n, 0.9).astype(np.int32)
        # Shops lean on a few brands: the brand is the shop's own with prob. 0.6.
        shop_brand = rng.integers(0, cfg.n_brands, cfg.n_shops)
        brand = np.where(rng.random(n) < 0.6, shop_brand[shop], sample_zipf_ids(rng, cfg.n_brands, n, 0.9))
        leaf_price = rng.normal(0.0, 1.5, tree.n_leaves)
        material_price = rng.normal(0.0, 0.7, ATTRIBUTES["material"])
        price = leaf_price[leaf] + material_price[attributes["material"]] + rng.normal(0.0, 1.0, n)
        price_bucket = np.clip(np.round(price + N_PRICE_BUCKETS / 2), 0, N_PRICE_BUCKETS - 1).astype(np.int8)
        return Items(leaf, attributes, semantic, created, popularity, effect, shop, brand.astype(np.int32), price_bucket)


@dataclass(frozen=True)
class Users:
    """All users: profile IDs, activity, interests and taste."""

    age_bucket: np.ndarray  # (U,) int8
    gender: np.ndarray  # (U,) int8
    city: np.ndarray  # (U,) int32
    activity: np.ndarray  # (U,) float64, sums to 1
    interest_leaves: np.ndarray  # (U, K) int16
    interest_weights: np.ndarray  # (U, K) float32, rows sum to 1
    taste: np.ndarray  # (U, S) float32 unit vector of what the user likes
    effect: np.ndarray  # (U,) float32 user click propensity

    @property
    def n(self) -> int:
        return self.age_bucket.shape[0]

    @staticmethod
    def sample(rng: np.random.Generator, cfg: WorldConfig, tree: CategoryTree) -> "Users":
        u = cfg.n_users
        age = rng.integers(0, N_AGE_BUCKETS, u).astype(np.int8)
        gender = rng.choice(N_GENDERS, size=u, p=[0.1, 0.45, 0.45]).astype(np.int8)
        city = sample_zipf_ids(rng, cfg.n_cities, u, 1.0).astype(np.int32)
        activity = zipf_weights(rng, u, ZIPF_USERS)
        # Profile shifts the main top category: a (gender, age) -> top prior table.
        n_top = len(TOP_CATEGORIES)
        per_top = tree.n_leaves // n_top
        top_prior = rng.dirichlet(np.full(n_top, 0.8), size=(N_GENDERS, N_AGE_BUCKETS))
        cdf = np.cumsum(top_prior[gender, age], axis=1)
        main_top = np.minimum((rng.random((u, 1)) > cdf).sum(axis=1), n_top - 1)
        # K leaves: mostly inside the main top category, sometimes anywhere.
        in_main = main_top[:, None] * per_top + rng.integers(0, per_top, (u, INTEREST_LEAVES))
        anywhere = rng.integers(0, tree.n_leaves, (u, INTEREST_LEAVES))
        leaves = np.where(rng.random((u, INTEREST_LEAVES)) < 0.75, in_main, anywhere).astype(np.int16)
        weights = rng.dirichlet(np.ones(INTEREST_LEAVES), size=u).astype(np.float32)
        # Taste: interest leaves plus a favourite colour and style.
        fav_colour = rng.integers(0, ATTRIBUTES["colour"], u)
        fav_style = rng.integers(0, ATTRIBUTES["style"], u)
        taste = (weights[..., None] * tree.leaf_vectors[leaves]).sum(axis=1)
        taste = taste + 0.8 * tree.attribute_vectors["colour"][fav_colour]
        taste = taste + 0.6 * tree.attribute_vectors["style"][fav_style]
        taste = (taste / np.linalg.norm(taste, axis=1, keepdims=True)).astype(np.float32)
        effect = rng.normal(0.0, 0.5, u).astype(np.float32)
        return Users(age, gender, city, activity, leaves, weights, taste, effect)

    def sample_users(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """User IDs drawn by activity, int64 (size,)."""
        cdf = np.cumsum(self.activity)
        return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), self.n - 1)

    def sample_leaves(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """One interest leaf per given user, drawn by interest weight."""
        cdf = np.cumsum(self.interest_weights[users], axis=1)
        k = np.minimum((rng.random((len(users), 1)) > cdf).sum(axis=1), INTEREST_LEAVES - 1)
        return self.interest_leaves[users, k]
