"""The single source of the served encoder's interface: names, dtypes, dims, batching.

Every Triton ``config.pbtxt`` (:mod:`serving.export`), the Python-backend
models (:mod:`serving.triton_models`), the client (:mod:`serving.client`) and
the tests read their names and sizes from here or from a :class:`ServingSpec`
built from the encoder checkpoint, so config and artifact cannot drift.

The public model, an ensemble of two steps::

    item_encoder (ensemble)
      title     BYTES [-1, 1]       -> item_preprocess (Python) -> tokens INT64 [-1, C]
      image     UINT8 [-1, H, W, 3] -----------------------------> INPUT__0  -+
      tokens                        -----------------------------> INPUT__1  -+- item_encoder_torchscript
      embedding FP32  [-1, D]       <----------------------------- OUTPUT__0 -+  (TorchScript model.pt)

It takes the inputs of the encoder's towers (``ServingSpec.modalities``) and
no other: a titles-only encoder's ensemble takes ``title`` alone (tokens are
the TorchScript model's ``INPUT__0``); an images-only encoder's takes
``image`` alone and has no preprocessing step. ``pytorch_libtorch`` names
the TorchScript model's inputs by position, so :func:`encoder_inputs` numbers
the present ones in ``MODALITIES`` order (image first).

Notation: ``B`` batch, ``H``/``W`` image height/width, ``C`` text context
length in tokens, ``D`` embedding width.

Example::

    >>> from pretrain.config import TowerConfig
    >>> spec = ServingSpec.from_tower(TowerConfig(embed_dim=16, context_length=8), fusion="concat")
    >>> spec.image_shape, spec.context_length, spec.dim, spec.max_batch_size
    ((64, 64, 3), 8, 32, 64)
    >>> titles = ServingSpec.from_tower(TowerConfig(embed_dim=16), fusion="text", modalities=("text",))
    >>> titles.dim, titles.inputs, encoder_inputs(titles.modalities)
    (16, ('title',), {'text': 'INPUT__0'})
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.config import MODALITIES, TowerConfig
from recsys.settings import setting

# -- model names (the repository's folders) ------------------------------------
ENCODER_MODEL = "item_encoder"  # the ensemble every client calls
PREPROCESS_MODEL = "item_preprocess"  # Python backend: titles (BYTES) -> token ids
TORCHSCRIPT_MODEL = "item_encoder_torchscript"  # the TorchScript encoder: pixels + tokens -> unit vectors
MODEL_VERSION = 1  # the numbered version folder of every model
ARTIFACT_FILE = "model.pt"  # TorchScript encoder in item_encoder_torchscript/1/
PYTHON_MODEL_FILE = "model.py"  # Python-backend source in <model>/1/

# -- tensor names and dtypes ---------------------------------------------------
IMAGE_INPUT = "image"  # UINT8 (B, H, W, 3), raw RGB pixels
TITLE_INPUT = "title"  # BYTES (B, 1), UTF-8 titles
EMBEDDING_OUTPUT = "embedding"  # FP32 (B, D), unit L2 norm
TOKENS = "tokens"  # INT64 (B, C), the preprocessing model's output
# pytorch_libtorch names tensors by position: INPUT__0 is forward's first argument.
ENCODER_IMAGE = "INPUT__0"
ENCODER_TOKENS = "INPUT__1"
ENCODER_OUTPUT = "OUTPUT__0"
IMAGE_DTYPE = "UINT8"  # Triton wire dtypes, as tritonclient names them
TITLE_DTYPE = "BYTES"
TOKENS_DTYPE = "INT64"
EMBEDDING_DTYPE = "FP32"
NUMPY_DTYPES: dict[str, type] = {"UINT8": np.uint8, "BYTES": np.object_, "INT64": np.int64, "FP32": np.float32}

# -- batching --------------------------------------------------------------------
MAX_BATCH_SIZE = 64  # items per request and per dynamic batch
QUEUE_DELAY_US = 2000  # dynamic batching: wait up to 2 ms to fill a batch
INSTANCES = 1  # model instances per model: one CPU worker process each (2-core machines)
# Intra-op threads of the served encoder. One: on 2 cores shared with the
# preprocessing worker and the clients, 2 threads spin against each other
# (measured: a batch of 64 took 55 ms on 1 thread, up to 1.2 s on 2 under load).
TORCH_THREADS = 1
WARMUP_BATCH_SIZES = (1, MAX_BATCH_SIZE)  # the encoder runs these before the server reports ready

# -- config parameters (strings in config.pbtxt `parameters`) -----------------------
PARAM_SHA256 = "encoder_sha256"  # SHA-256 of the encoder.pt the artifact came from
PARAM_DIM = "dim"  # D
PARAM_CONTEXT_LENGTH = "context_length"  # C
PARAM_TOKENIZER = "tokenizer_model"  # open_clip.get_tokenizer name (pretrain.towers.TOKENIZER_MODEL)
PARAM_ARTIFACT = "artifact"  # the TorchScript file in the version folder (ARTIFACT_FILE)
PARAM_THREADS = "torch_threads"  # torch intra-op threads of the encoder worker (0: torch's default)

# The ensemble input of each modality's raw content.
MODALITY_INPUT: dict[str, str] = {"image": IMAGE_INPUT, "text": TITLE_INPUT}


def encoder_inputs(modalities: tuple[str, ...]) -> dict[str, str]:
    """The TorchScript model's input of each present modality: ``INPUT__0``, ``INPUT__1``... in ``MODALITIES`` order.

    Both modalities give ``{"image": ENCODER_IMAGE, "text": ENCODER_TOKENS}``.
    """
    return {m: f"INPUT__{i}" for i, m in enumerate(m for m in MODALITIES if m in modalities)}


@dataclass(frozen=True)
class ServingSpec:
    """Sizes of the served encoder; everything a config or client needs beyond the names above.

    Built from the checkpoint's ``TowerConfig`` with :meth:`from_tower`.

    Args:
        image_size (tuple[int, int]): (H, W) of the input pixels.
        context_length (int): C, tokens per title.
        dim (int): D, width of the item vectors (2x the tower width for ``concat`` fusion).
        tokenizer_model (str): name ``open_clip.get_tokenizer`` builds the tokenizer from.
        max_batch_size (int): items per request and per dynamic batch.
        queue_delay_us (int): longest wait of the dynamic batcher, microseconds.
        encoder_sha256 (str): SHA-256 of the source ``encoder.pt`` ("" if unknown).
        modalities (tuple[str, ...]): the encoder's towers (``pretrain.config.MODALITIES``
            subset): which inputs the served model takes. ``image_size`` and
            ``context_length`` are the tower config's either way; only the
            present towers' are used.
    """

    image_size: tuple[int, int]  # (H, W)
    context_length: int  # C
    dim: int  # D
    tokenizer_model: str  # pretrain.towers.TOKENIZER_MODEL
    max_batch_size: int = MAX_BATCH_SIZE  # items per request and dynamic batch
    queue_delay_us: int = QUEUE_DELAY_US  # dynamic batching delay
    encoder_sha256: str = ""  # provenance: which encoder.pt
    modalities: tuple[str, ...] = MODALITIES  # the towers: the inputs served

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))  # a list from export.json
        if not self.modalities or any(m not in MODALITIES for m in self.modalities):
            raise ValueError(f"ServingSpec.modalities must be a non-empty subset of {list(MODALITIES)}, got {self.modalities}")
        for name in ("context_length", "dim", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServingSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.queue_delay_us < 0:
            raise ValueError(f"ServingSpec.queue_delay_us must be >= 0, got {self.queue_delay_us}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"ServingSpec.image_size must be (H, W) of positive ints, got {self.image_size}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3): one item's pixels, the batch dimension left out."""
        return (self.image_size[0], self.image_size[1], 3)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The ensemble's inputs, in order: ``image`` and/or ``title``."""
        return tuple(MODALITY_INPUT[m] for m in MODALITIES if m in self.modalities)

    @staticmethod
    def from_tower(
        tower: TowerConfig,
        fusion: str,
        max_batch_size: int = MAX_BATCH_SIZE,
        queue_delay_us: int = QUEUE_DELAY_US,
        encoder_sha256: str = "",
        reduced_dim: int = 0,
        modalities: tuple[str, ...] = MODALITIES,
    ) -> "ServingSpec":
        """The spec of an encoder with towers ``tower`` of ``modalities``, ``fusion`` and ``reduced_dim`` (see ``pretrain.towers.ItemEncoder``)."""
        from pretrain.towers import TOKENIZER_MODEL, resolve_fusion

        fusion = resolve_fusion(fusion, tuple(modalities))
        dim = reduced_dim or (2 * tower.embed_dim if fusion == "concat" else tower.embed_dim)
        return ServingSpec(
            image_size=(tower.image_size, tower.image_size),
            context_length=tower.context_length,
            dim=dim,
            tokenizer_model=TOKENIZER_MODEL,
            max_batch_size=max_batch_size,
            queue_delay_us=queue_delay_us,
            encoder_sha256=encoder_sha256,
            modalities=tuple(modalities),
        )


@dataclass(frozen=True)
class ExportConfig:
    """Batching and threading of an export (``mmctr export``'s settings; defaults from the constants above)."""

    max_batch_size: int = setting(MAX_BATCH_SIZE, "items per request and dynamic batch")
    queue_delay_us: int = setting(QUEUE_DELAY_US, "dynamic batching delay, microseconds")
    torch_threads: int = setting(TORCH_THREADS, "intra-op threads of the served encoder; 0: torch's default")
