"""Target and history item IDs as one-ID bags in fixed history slots, and back.

Notation:

* ``B``: batch size.
* ``S``: history slots per impression (the world's ``max_history_len``).
* ``L``: longest history in the batch (at least 1, so shapes never hold a 0), L <= S.
* ``D``: embedding width.

Both item tables (the ID model's trained one and the frozen multimodal one)
read the impressions' ``item_id`` and ``history_item_ids`` this way: one
feature ``ITEM_ROWS`` of ``B * (1 + S)`` bags, the B targets first, then S
slots per impression holding one history ID or none. A table's pooled
(sum) output is then the rows themselves, empty slots zeros, and it views
as the padded history without a copy. Every rank holds the same number of
bags whatever the histories, which pooled row-wise sharding on gloo needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

ITEM_ROWS = "item_rows"  # the item tables' one feature: targets, then history slots, one ID or none per bag
DEFAULT_HISTORY_SLOTS = 50  # history items one impression may hold (the trainer passes the world's max_history_len)


@dataclass
class ItemRows:
    """A batch's target and history item IDs as one-ID bags, and where they land.

    Args:
        features (KeyedJaggedTensor): one key ``ITEM_ROWS``, stride ``B * (1 + S)``.
        mask (torch.Tensor): bool tensor of shape (B, L), True = a real history item.
        slots (int): S.
    """

    features: KeyedJaggedTensor
    mask: torch.Tensor
    slots: int
    shared: torch.Tensor | None = None  # (B,) int64: the history (of R) each impression reads; None: its own

    def split(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A table's pooled output (B + R * S, D) to the targets (B, D) and the history (B, L, D).

        R = B unless histories are shared. Both are views of ``pooled`` (shared
        histories: the history is gathered, one (L, D) block per impression);
        the history is zeros past each impression's length.
        """
        B, L = self.mask.shape
        history = pooled[B:].view(-1, self.slots, pooled.shape[-1])[:, :L]
        return pooled[:B], history if self.shared is None else history.index_select(0, self.shared)


def item_rows(
    features: KeyedJaggedTensor,
    slots: int,
    target_key: str = "item_id",
    history_key: str | None = "history_item_ids",
    rows_key: str = ITEM_ROWS,
    history_of: torch.Tensor | None = None,
) -> ItemRows:
    """Builds the one-ID bags of a batch's target feature and its history sequence.

    Args:
        features (KeyedJaggedTensor): the batch KJT, stride B, one ``target_key`` ID per impression.
        slots (int): S; a history longer than S is refused (ValueError).
        target_key (str): the target's key (the item, or one of its side features).
        history_key (str | None): the jagged history key of the same table;
            ``None``: no history (every slot empty).
        rows_key (str): the key of the returned bags (the table's feature name).
        history_of (torch.Tensor | None): int64 tensor of shape (B,): impression ``b``
            reads the history of impression ``history_of[b]`` (the online ranker: one
            history per request, looked up once, not once per candidate). Only those
            impressions may hold history IDs in ``features``; the others hold none.
            ``None``: every impression its own history.

    Returns:
        ItemRows: the bags (B targets, then S slots per distinct history), the (B, L) history mask and S.

    Raises:
        ValueError: an impression holds more than S history items, a target
            feature does not hold one ID per impression, or (``history_of``) an
            impression no other reads from holds history IDs.

    Example::

        >>> kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids"],
        ...     values=torch.tensor([7, 8, 1, 2, 3]), lengths=torch.tensor([1, 1, 2, 1]))
        >>> rows = item_rows(kjt, slots=3)
        >>> rows.features.values().tolist(), rows.features.lengths().tolist()
        ([7, 8, 1, 2, 3], [1, 1, 1, 1, 0, 1, 0, 0])
        >>> rows.mask.tolist()
        [[True, True], [True, False]]
        >>> target, history = rows.split(torch.arange(8.0).unsqueeze(1))
        >>> target.squeeze(1).tolist(), history.squeeze(2).tolist()
        ([0.0, 1.0], [[2.0, 3.0], [5.0, 6.0]])

    Two candidates of one request, the history given once (on the first)::

        >>> kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids"],
        ...     values=torch.tensor([7, 8, 1, 2]), lengths=torch.tensor([1, 1, 2, 0]))
        >>> rows = item_rows(kjt, slots=3, history_of=torch.tensor([0, 0]))
        >>> rows.features.lengths().tolist(), rows.mask.tolist()
        ([1, 1, 1, 1, 0], [[True, True], [True, True]])
        >>> target, history = rows.split(torch.arange(5.0).unsqueeze(1))
        >>> target.squeeze(1).tolist(), history.squeeze(2).tolist()
        ([0.0, 1.0], [[2.0, 3.0], [2.0, 3.0]])
    """
    if slots < 1:
        raise ValueError(f"history slots must be >= 1, got {slots}")
    B = features.stride()
    targets = features[target_key].values()
    if targets.shape[0] != B:
        raise ValueError(f"{target_key} must hold one ID per impression; got {targets.shape[0]} for B={B}")
    if history_key is None:
        lengths, history_values = torch.zeros(B, dtype=torch.int64, device=targets.device), targets[:0]
    else:
        history = features[history_key]
        lengths, history_values = history.lengths(), history.values()
    shared = None
    if history_of is not None:  # S slots per distinct history only
        owners, shared = torch.unique(history_of, return_inverse=True)
        owned = lengths[owners]
        if int(owned.sum()) != int(lengths.sum()):
            raise ValueError(f"{history_key}: with history_of, only the impressions it names may hold history IDs")
        lengths = owned
    L = max(1, int(lengths.max())) if lengths.numel() else 1
    if L > slots:
        raise ValueError(
            f"{history_key}: an impression holds {L} items, more than history_slots={slots} "
            f"(the world's max_history_len)"
        )
    filled = torch.arange(slots, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (R, S)
    dtype = features.lengths().dtype
    bag_lengths = torch.cat([torch.ones(B, dtype=dtype, device=filled.device), filled.view(-1).to(dtype)])
    bags = KeyedJaggedTensor(
        keys=[rows_key], values=torch.cat([targets, history_values]), lengths=bag_lengths, stride=B + filled.numel()
    )
    mask = filled[:, :L] if shared is None else filled[:, :L].index_select(0, shared)
    return ItemRows(features=bags, mask=mask, slots=slots, shared=shared)
