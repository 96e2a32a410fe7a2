"""SCL pre-training and the CLIP-style baseline: one trainer, DDP over gloo or NCCL.

- ``scl``: positive pairs from search -> purchase chains, (query image,
  purchased item's image) and (query text, purchased item's title). Keys come
  from a MoCo momentum encoder; negatives from a memory bank per modality
  (InfoNCE), plus a triplet loss on the clicked-not-bought items.
- ``clip``: the same towers on (item image, item title) pairs with in-batch
  negatives, the generic recipe SCL is compared against.
- ``random``: no training; exports the randomly initialised towers.

The towers are those of the dataset's item content (``manifest.features.content``;
``pretrain.towers`` builds only those), and each method uses what it needs:

============  ================================  ==================================
content       with a search log                 without one (no ``searches/``)
============  ================================  ==================================
title, image  scl, clip, random                 clip, random (scl: one-line error)
title only    scl on text pairs, random         random only
image only    scl on image pairs, random        random only
============  ================================  ==================================

With one modality SCL trains on (query, purchased item) pairs of that
modality alone: one InfoNCE over one memory bank, one triplet loss. CLIP
aligns an item's image with its own title, so it needs both; without
searches a one-modality dataset has no contrastive pair at all, and only
``random`` (untrained towers; or ``init_from`` an encoder trained elsewhere)
runs. A method that cannot run is refused in one line naming the one that
can (:func:`check_method`), before the items are read.

Every method ends by exporting the item vector table of every item
(``item_vectors.parquet``, ``vectors.json``) and the encoder (``encoder.pt``).
Checkpoints go to ``OUT/checkpoints`` every ``checkpoint_every`` steps; a
restarted job resumes from the newest one at the same data position.

Notation: ``B`` batch per process, ``N`` items, ``C`` tokens, ``D`` dims.

Example::

    >>> check_method("scl", ("image", "text"), searches=False)
    Traceback (most recent call last):
        ...
    ValueError: SCL needs the search log (searches/); this dataset has none: pre-train with --method clip
    >>> check_method("clip", ("text",), searches=True)
    Traceback (most recent call last):
        ...
    ValueError: CLIP aligns each item's image with its title; this dataset's items have only titles: pre-train with --method scl
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pretrain.config import METHODS, MODALITIES, PretrainJob, SclConfig, content_modalities
from pretrain.content_cache import item_content_and_tokens
from pretrain.data import (
    SearchPairs,
    declared_content,
    has_searches,
    load_search_pairs,
    no_searches_message,
    split_heldout,
)
from pretrain.encoder import ENCODER_FILE, MODALITY_FILES, build_encoder, load_encoder, save_encoder
from pretrain.losses import clip_loss, info_nce_loss, triplet_loss
from pretrain.momentum import make_key_encoder, momentum_update
from pretrain.queue import KeyQueue
from pretrain.towers import ItemEncoder, build_tokenizer, state_modality
from recsys.data.schema import MANIFEST, Manifest
from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, write_item_vectors
from recsys.distributed import DistContext, init_distributed, on_main

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
EMBED_BATCH = 512  # items per forward when embedding the catalogue


TOWER_PHRASE = {"image": "images", "text": "titles"}  # what a one-modality dataset's items have, in messages


def check_method(method: str, modalities: tuple[str, ...], searches: bool) -> None:
    """Raises ValueError, one line naming a method that can run, when ``method`` cannot run on the data.

    Args:
        method (str): one of ``METHODS``.
        modalities (tuple[str, ...]): the towers of the dataset's content (``content_modalities``).
        searches (bool): whether the dataset has a search log (``pretrain.data.has_searches``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if not modalities:
        raise ValueError("the items carry no content (manifest features.content is empty); "
                         "pre-training needs titles, images or both")  # fmt: skip
    if method == "scl" and not searches:
        raise ValueError(no_searches_message(modalities))
    if method == "clip" and len(modalities) < len(MODALITIES):
        other = "scl" if searches else "random (no search log either: no contrastive pair)"
        raise ValueError(f"CLIP aligns each item's image with its title; this dataset's items have only "
                         f"{TOWER_PHRASE[modalities[0]]}: pre-train with --method {other}")  # fmt: skip


def _tower_vectors(encoder: ItemEncoder, images: torch.Tensor | None, tokens: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Unit vectors (B, D) of each tower of ``encoder`` from its input."""
    out = {}
    if "image" in encoder.modalities:
        out["image"] = encoder.encode_image(images)
    if "text" in encoder.modalities:
        out["text"] = encoder.encode_text(tokens)
    return out


class TowerEncode(nn.Module):
    """The module DDP wraps: the unit vector of each of the encoder's towers in one forward.

    Args:
        encoder (ItemEncoder): the towers.
    """

    def __init__(self, encoder: ItemEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor | None, tokens: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, 3) and int64 (B, C) (None for an absent tower) -> {modality: (B, D) unit tensor}."""
        return _tower_vectors(self.encoder, images, tokens)


@torch.no_grad()
def embed_items(
    encoder: ItemEncoder, images: np.ndarray | None, tokens: torch.Tensor | None, device: torch.device, progress: bool = False
) -> dict[str, np.ndarray]:
    """The vectors of every item, each float32: per tower of ``encoder`` (N, D) and fused ``"item"`` (N, D').

    Args:
        encoder (ItemEncoder): the encoder.
        images (np.ndarray | None): uint8 (N, H, W, 3); None exactly when the encoder has no image tower.
        tokens (Tensor | None): int64 (N, C); None exactly when it has no text tower.

    Returns:
        dict[str, np.ndarray]: keys ``encoder.modalities`` and ``"item"``.
    """
    encoder.eval()
    n = len(images) if images is not None else len(tokens)
    out: dict[str, list[np.ndarray]] = {m: [] for m in (*encoder.modalities, "item")}
    for a in tqdm(range(0, n, EMBED_BATCH), desc="embed items", disable=not progress, unit="batch"):
        img = None if images is None else torch.from_numpy(images[a : a + EMBED_BATCH]).to(device)
        tok = None if tokens is None else tokens[a : a + EMBED_BATCH].to(device)
        vectors = _tower_vectors(encoder, img, tok)
        for m, v in vectors.items():
            out[m].append(v.cpu().numpy())
        out["item"].append(encoder.fuse(vectors.get("image"), vectors.get("text")).cpu().numpy())
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Pretrainer:
    """Trains one method on one world (see the module docstring).

    Args:
        cfg (SclConfig): hyper-parameters and tower sizes.
        method (str): one of ``METHODS``.
        world (Path): dataset directory.
        out (Path): run directory.
        ctx (DistContext): this process's rank, world size and device.
        content_cache (Path | None): folder of the items' decoded content and tokens
            (``pretrain.content_cache``); None: decoded and tokenized here, not kept.
    """

    def __init__(self, cfg: SclConfig, method: str, world: Path, out: Path, ctx: DistContext,
                 content_cache: Path | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        self.cfg, self.method, self.world, self.out, self.ctx = cfg, method, Path(world), Path(out), ctx
        manifest = Manifest.read(world)
        self.modalities = content_modalities(manifest.features.content)
        check_method(method, self.modalities, has_searches(world))
        content, image_size = declared_content(world)
        if "image" in content and image_size != cfg.tower.image_size:
            raise ValueError(f"{world}: images are {image_size}px but tower.image_size is {cfg.tower.image_size}")
        # with a cache, rank 0 makes its entry while the others wait, then they read it: each rank decoding every
        # image and title itself took both cores for the same work (~60 s on the small world, 2 ranks)
        made = on_main(ctx, lambda: item_content_and_tokens(world, cfg.tower, content_cache)) if content_cache else None
        self.items, self.item_tokens = made or item_content_and_tokens(world, cfg.tower, content_cache)  # tokens (N, C)
        tokenize = build_tokenizer(cfg.tower)
        self.pairs: SearchPairs | None = None  # only SCL reads the search log
        self.query_tokens: torch.Tensor | None = None
        if method == "scl":
            self.pairs = split_heldout(load_search_pairs(world, self.items), manifest.test_day)[0]
            if self.pairs.query_texts is not None:
                self.query_tokens = tokenize(self.pairs.query_texts)  # (S, C)
        self.encoder = build_encoder(cfg, self.modalities).to(ctx.device)
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        self.encoder.clip.logit_scale.data.fill_(math.log(1.0 / cfg.temperature))
        if method == "scl":
            self.encoder.clip.logit_scale.requires_grad_(False)  # only the CLIP loss uses it
        self.key = make_key_encoder(self.encoder)
        d = cfg.tower.embed_dim
        self.queues = nn.ModuleDict({m: KeyQueue(cfg.queue_size, d) for m in self.modalities})
        self.queues.to(ctx.device)
        model: nn.Module = TowerEncode(self.encoder)
        if ctx.world_size > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.model = model
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        # fused: the same AdamW update in one kernel over every parameter. The per-tensor loop spent ~23% of a CLIP
        # step on CPU (mostly on the 3.2M-weight token embedding) with 16x16-patch towers; fused, ~4%
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        n = len(self.pairs) if self.pairs is not None else len(self.items.item_ids)
        self.steps_per_epoch = max(1, (n // ctx.world_size) // cfg.batch_size)
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        warm = min(cfg.warmup_steps, max(1, self.total_steps // 10))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, self.total_steps - warm))),
        )
        self.step = 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, this rank's rows)

    def _init_from(self, path: Path) -> None:
        """Starts from another encoder's weights: those of this encoder's towers (a two-tower source may seed one tower).

        Raises:
            ValueError: the source lacks a tower this dataset needs, or its towers differ in size.
        """
        source = load_encoder(path)
        missing = [m for m in self.modalities if m not in source.modalities]
        if missing:
            raise ValueError(f"{path}: an encoder of {list(source.modalities)} cannot start one of "
                             f"{list(self.modalities)}: it has no {missing[0]} tower")  # fmt: skip
        state = {k: v for k, v in source.state_dict().items() if state_modality(k) in (None, *self.modalities)}
        try:
            self.encoder.load_state_dict(state)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{path}: its towers differ from this config's tower section ({e})") from e

    # -- data order ---------------------------------------------------------
    def _batch_rows(self, step: int) -> np.ndarray:
        """Rows (sessions or items) of this rank's batch at global ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:  # one permutation per epoch
            n = len(self.pairs) if self.pairs is not None else len(self.items.item_ids)
            perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            self._order = (epoch, perm[self.ctx.rank :: self.ctx.world_size])
        b = self.cfg.batch_size
        return self._order[1][k * b : (k + 1) * b]

    # -- steps --------------------------------------------------------------
    def _images(self, rows: np.ndarray, source: np.ndarray | None) -> torch.Tensor | None:
        return None if source is None else torch.from_numpy(source[rows]).to(self.ctx.device)

    def _tokens(self, rows: np.ndarray, source: torch.Tensor | None) -> torch.Tensor | None:
        return None if source is None else source[rows].to(self.ctx.device)

    def _item_inputs(self, rows: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The content of item ``rows``: pixels and tokens, None for an absent tower."""
        return self._images(rows, self.items.images), self._tokens(rows, self.item_tokens)

    def _scl_loss(self, rows: np.ndarray) -> torch.Tensor:
        """InfoNCE and triplet losses summed over the encoder's modalities (one or two)."""
        cfg, dev, p = self.cfg, self.ctx.device, self.pairs
        q = self.model(self._images(rows, p.query_images), self._tokens(rows, self.query_tokens))  # {m: (B, D)}
        pur = p.purchased_rows[rows]
        hard = p.hard_rows[rows]  # (B, Hn), -1 padded
        mask = torch.from_numpy(hard >= 0).to(dev)
        # lambda 0 (the pipeline's recipe): the triplet term is 0, so no hard negative goes through the encoder
        use_triplet = cfg.triplet_weight > 0
        with torch.no_grad():
            momentum_update(self.key, self.encoder, cfg.momentum)
            k = _tower_vectors(self.key, *self._item_inputs(pur))  # {m: (B, D)}
            real = hard[hard >= 0]  # only real hard negatives go through the encoder
            h = {m: v.new_zeros(*hard.shape, v.shape[1]) for m, v in k.items()}  # (B, Hn, D), zero padded
            if use_triplet and len(real):
                for m, v in _tower_vectors(self.key, *self._item_inputs(real)).items():
                    h[m][mask] = v
        # Negatives: this batch's keys and the bank, minus keys of the query's own
        # item (itself in the batch; earlier purchases of it in the bank).
        item = torch.from_numpy(self.items.item_ids[pur]).to(dev)  # (B,)
        loss, triplet = torch.zeros((), device=dev), torch.zeros((), device=dev)
        for m in self.modalities:
            queue = self.queues[m]
            negatives = torch.cat([k[m], queue.keys()])  # (B + K', D)
            ignore = item[:, None] == torch.cat([item, queue.ids()])[None, :]  # (B, B + K')
            loss = loss + info_nce_loss(q[m], k[m], negatives, cfg.temperature, ignore)
            if use_triplet:
                triplet = triplet + triplet_loss(q[m], k[m], h[m], mask, cfg.triplet_margin)
        self._pending_keys = (k, item)
        return loss + cfg.triplet_weight * triplet if use_triplet else loss

    def _clip_loss(self, rows: np.ndarray) -> torch.Tensor:
        v = self.model(*self._item_inputs(rows))
        scale = self.encoder.clip.logit_scale.clamp(max=math.log(100.0)).exp()
        return clip_loss(v["image"], v["text"], scale, self.ctx.rank, self.ctx.world_size)

    def train_step(self) -> float:
        self.model.train()
        rows = self._batch_rows(self.step)
        loss = self._scl_loss(rows) if self.method == "scl" else self._clip_loss(rows)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.method == "scl":
            keys, item = self._pending_keys
            for m in self.modalities:
                self.queues[m].enqueue(keys[m], item)  # gathered from every rank inside
        self.step += 1
        return float(loss.detach())

    # -- checkpoints --------------------------------------------------------
    def _state(self) -> dict[str, object]:
        return {
            "step": self.step,
            "method": self.method,
            "encoder": self.encoder.state_dict(),
            "key": self.key.state_dict(),
            "queues": self.queues.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes ``checkpoints/latest.pt`` atomically (all ranks hold the same state)."""

        def write() -> None:
            d = self.out / CHECKPOINT_DIR
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / (LATEST + ".tmp")
            torch.save(self._state(), tmp)
            tmp.replace(d / LATEST)

        on_main(self.ctx, write)

    def maybe_resume(self) -> bool:
        path = self.out / CHECKPOINT_DIR / LATEST
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.ctx.device, weights_only=True)
        if state["method"] != self.method:
            raise ValueError(f"{path}: checkpoint of method {state['method']!r}, this run is {self.method!r}")
        self.encoder.load_state_dict(state["encoder"])
        self.key.load_state_dict(state["key"])
        self.queues.load_state_dict(state["queues"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        return True

    # -- the job ------------------------------------------------------------
    def fit(self, checkpoint_every: int, progress: bool = True) -> dict[str, float]:
        resumed = self.maybe_resume()
        bar = tqdm(
            total=self.total_steps if self.method != "random" else 0,
            initial=self.step,
            desc=f"pretrain {self.method}",
            disable=not (progress and self.ctx.is_main),
            unit="step",
        )
        t0, start, loss = time.perf_counter(), self.step, float("nan")
        if self.method != "random":
            while self.step < self.total_steps:
                loss = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if self.step % checkpoint_every == 0 or self.step == self.total_steps:
                    self.save_checkpoint()
        bar.close()
        seconds = time.perf_counter() - t0
        steps = self.step - start
        return {
            "steps": float(self.step),
            "resumed": float(resumed),
            "final_loss": loss,
            "samples_per_s_per_process": steps * self.cfg.batch_size / seconds if steps else 0.0,
        }

    def export(self, stats: dict[str, float], progress: bool = True) -> None:
        """Rank 0 embeds every item and writes the vector table, encoder and manifest; the other ranks wait."""
        on_main(self.ctx, lambda: self._export(stats, progress))

    def _export(self, stats: dict[str, float], progress: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the other ranks wait (on_main)
        try:
            vec = embed_items(self.encoder, self.items.images, self.item_tokens, self.ctx.device, progress)
        finally:
            torch.set_num_threads(threads)
        embed_s = time.perf_counter() - t
        for name in self.encoder.modalities:  # the present towers' vectors only
            np.save(self.out / MODALITY_FILES[name], vec[name])
        write_item_vectors(self.out / VECTORS_FILE, self.items.item_ids, vec["item"], self.encoder.output_dim())
        digest = save_encoder(self.out / ENCODER_FILE, self.encoder, self.cfg.tower)
        manifest = {
            "method": self.method,
            "modalities": list(self.encoder.modalities),
            "dim": self.encoder.output_dim(),
            "items": int(len(self.items.item_ids)),
            "encoder_sha256": digest,
            "world": str(self.world),
            "world_manifest_sha256": _sha256(self.world / MANIFEST),
            "world_size": self.ctx.world_size,
            "embed_seconds": embed_s,
            **stats,
            "config": dataclasses.asdict(self.cfg),
        }
        (self.out / VECTORS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def run_pretrain(
    world: Path, out: Path, method: str, cfg: SclConfig, checkpoint_every: int = PretrainJob.checkpoint_every,
    progress: bool = True, content_cache: Path | None = PretrainJob.content_cache,
) -> dict[str, float]:
    """``mmctr pretrain``: trains (resuming if a checkpoint exists) and exports."""
    ctx = init_distributed()
    trainer = Pretrainer(cfg, method, world, out, ctx, content_cache)
    stats = trainer.fit(checkpoint_every, progress)
    trainer.export(stats, progress)
    return stats
