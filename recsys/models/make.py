"""MAKE, the multimodal knowledge extractor: a DIN over the frozen multimodal vectors.

Notation:

* ``B``: batch size; ``L``: padded history length; ``F``: dense features.
* ``D``: multimodal vector width; ``H``: last hidden width of MAKE's MLP.

Stage 1 trains :class:`MakeModel` (the frozen table plus :class:`Make`) on
the CTR task for several epochs. Stage 2 copies ``MakeModel.make``'s state
into ``CtrModel.make``, whose three outputs (:class:`MakeOutput`) join the
ID model's MLP input; with ``ModelConfig.make_frozen`` they are computed
without gradients, and with ``ModelConfig.make_attention_frozen`` only the
target attention keeps its stage-1 weights (``recsys.models.ctr_model``).

MAKE's MLP input is ``[target, attention, target * attention, missing flag,
dense]``: the ID model's layout with every ID embedding replaced by the
multimodal vector (only item IDs have vectors, so user-side IDs drop out);
the product gives a one-hidden-layer MLP the target-interest match directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.spec import FeatureSpec
from recsys.models.attention import BilinearTargetAttention, TargetAttention
from recsys.models.config import ModelConfig
from recsys.models.mm_table import MultimodalFeatures, multimodal_arch
from recsys.models.sequence import DEFAULT_HISTORY_SLOTS


MAKE_MODULE = "make"  # attribute holding ``Make`` in ``CtrModel`` and ``MakeModel``


def is_make_param(name: str) -> bool:
    """Whether a parameter or state entry (fully qualified name) belongs to MAKE.

    Example::

        >>> is_make_param("model.make.attention.unit.0.weight"), is_make_param("model.id_model.over_arch.1.bias")
        (True, False)
    """
    return f".{MAKE_MODULE}." in f".{name}"


@dataclass
class MakeOutput:
    """What MAKE hands to the ID model in stage 2.

    Args:
        attention (torch.Tensor): attention output, tensor of shape (B, D).
        hidden (torch.Tensor): last hidden layer of the shallow MLP, tensor of shape (B, H).
        logit (torch.Tensor): MAKE's CTR logit, tensor of shape (B,).
    """

    attention: torch.Tensor
    hidden: torch.Tensor
    logit: torch.Tensor

    def mlp_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three outputs as 2-D MLP inputs: (B, D), (B, H), (B, 1)."""
        return self.attention, self.hidden, self.logit.unsqueeze(-1)


@dataclass(frozen=True)
class MakeConfig:
    """Widths and switches of :class:`Make` (from ``ModelConfig`` by :func:`make_config`).

    Args:
        attention (str): the target attention, ``"din"`` (:class:`TargetAttention`) or
            ``"bilinear"`` (:class:`BilinearTargetAttention`).
        attention_hidden (tuple[int, ...]): hidden widths of the target attention's unit (``"din"``;
            empty for ``"bilinear"``, which has none).
        attention_softmax (bool): normalise the attention weights with a masked softmax.
        hidden (tuple[int, ...]): hidden widths of the shallow MLP; the last is H.
        fused_kernels (bool): the attention may use ``recsys.models.fused``'s kernel.
    """

    attention: str  # ModelConfig.make_attention
    attention_hidden: tuple[int, ...]  # ModelConfig.make_attention_hidden
    attention_softmax: bool  # ModelConfig.attention_softmax (shared with the ID model's attention)
    hidden: tuple[int, ...]  # ModelConfig.make_hidden
    fused_kernels: bool  # ModelConfig.fused_kernels


def make_config(config: ModelConfig) -> MakeConfig:
    """The part of the model configuration that :class:`Make` reads.

    Example::

        >>> make_config(ModelConfig(make_hidden=(16,))).hidden
        (16,)
    """
    return MakeConfig(
        attention=config.make_attention,
        attention_hidden=config.make_attention_hidden if config.make_attention == "din" else (),  # bilinear: no unit
        attention_softmax=config.attention_softmax,
        hidden=config.make_hidden,
        fused_kernels=config.fused_kernels,
    )


class Make(nn.Module):
    """Target attention over multimodal history vectors, then a shallow MLP -> logit.

    Args:
        config (MakeConfig): widths of the attention unit and of the MLP.
        mm_dim (int): D, width of the multimodal vectors.
        dense_dim (int): F, the dense features (``len(spec.dense)``).
        device (torch.device | None): where to create parameters (``meta`` works).

    Example::

        >>> config = MakeConfig(attention="din", attention_hidden=(8,), attention_softmax=False, hidden=(64,),
        ...     fused_kernels=False)
        >>> make = Make(config, mm_dim=4, dense_dim=2)
        >>> mm = MultimodalFeatures(target=torch.randn(2, 4), history=torch.randn(2, 3, 4),
        ...     history_mask=torch.ones(2, 3, dtype=torch.bool), target_missing=torch.zeros(2, 1))
        >>> out = make(mm, torch.zeros(2, 2))
        >>> out.attention.shape, out.hidden.shape, out.logit.shape, make.output_dim()
        (torch.Size([2, 4]), torch.Size([2, 64]), torch.Size([2]), 69)
    """

    def __init__(self, config: MakeConfig, mm_dim: int, dense_dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        self._mm_dim = mm_dim
        self._hidden_dim = config.hidden[-1]
        self.attention: TargetAttention | BilinearTargetAttention = (
            BilinearTargetAttention(
                mm_dim, softmax=config.attention_softmax, fused=config.fused_kernels, device=device
            )
            if config.attention == "bilinear"
            else TargetAttention(
                mm_dim,
                config.attention_hidden,
                softmax=config.attention_softmax,
                fused=config.fused_kernels,
                device=device,
            )
        )
        self.mlp = MLP(3 * mm_dim + 1 + dense_dim, list(config.hidden), device=device)
        self.logit = nn.Linear(self._hidden_dim, 1, device=device)

    def output_dim(self) -> int:
        """Total width of :meth:`MakeOutput.mlp_inputs`: D + H + 1."""
        return self._mm_dim + self._hidden_dim + 1

    def forward(self, mm: MultimodalFeatures, dense: torch.Tensor) -> MakeOutput:
        """
        Args:
            mm (MultimodalFeatures): target (B, D), history (B, L, D), masks.
            dense (torch.Tensor): dense features, tensor of shape (B, F).

        Returns:
            MakeOutput: attention (B, D), hidden (B, H), logit (B,).
        """
        attention = self.attention(mm.target, mm.history, mm.history_mask)  # (B, D)
        hidden = self.mlp(torch.cat([mm.target, attention, mm.target * attention, mm.target_missing, dense], dim=-1))
        return MakeOutput(attention=attention, hidden=hidden, logit=self.logit(hidden).squeeze(-1))


class MakeModel(nn.Module):
    """Stage 1 of MAKE: the frozen multimodal table and :class:`Make`, returning logits.

    Args:
        config (ModelConfig): MAKE's part of it (:func:`make_config`) is read.
        spec (FeatureSpec): the dataset's features (item and history keys, dense width).
        num_items (int): rows of the multimodal table (``MultimodalArch``).
        mm_dim (int): D.
        device (torch.device | None): where to create parameters (``meta`` works).
        history_slots (int): the most history items an impression holds (``MultimodalArch``).

    Example::

        >>> from recsys.data.spec import world_spec
        >>> model = MakeModel(ModelConfig(), world_spec(), num_items=5, mm_dim=4)
        >>> kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids"],
        ...     values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 2, 0]))
        >>> model(torch.zeros(2, 2), kjt).shape
        torch.Size([2])
    """

    def __init__(
        self,
        config: ModelConfig,
        spec: FeatureSpec,
        num_items: int,
        mm_dim: int,
        device: torch.device | None = None,
        history_slots: int = DEFAULT_HISTORY_SLOTS,
    ) -> None:
        super().__init__()
        self.mm_arch = multimodal_arch(spec, num_items, mm_dim, device, history_slots)
        self.make = Make(make_config(config), mm_dim, len(spec.dense), device=device)

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            dense (torch.Tensor): dense features, tensor of shape (B, F).
            features (KeyedJaggedTensor): the batch KJT, stride B.
            real (torch.Tensor | None): the rows that are impressions (``CtrModel.forward``);
                unused: stage 1 reads only the frozen table, which admits nothing.

        Returns:
            torch.Tensor: logits, tensor of shape (B,).
        """
        return self.make(self.mm_arch(features), dense).logit
