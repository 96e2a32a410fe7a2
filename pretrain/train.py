"""SCL pre-training and the CLIP-style baseline: one trainer, DDP over gloo or NCCL.

- ``scl``: positive pairs from search -> purchase chains, (query image,
  purchased item's image) and (query text, purchased item's title). Keys come
  from a MoCo momentum encoder; negatives from a memory bank per modality
  (InfoNCE), plus a triplet loss on the clicked-not-bought items.
- ``clip``: the same towers on (item image, item title) pairs with in-batch
  negatives, the generic recipe SCL is compared against.
- ``random``: no training; exports the randomly initialised towers.

Every method ends by exporting the item vector table of every item
(``item_vectors.parquet``, ``vectors.json``) and the encoder (``encoder.pt``).
Checkpoints go to ``OUT/checkpoints`` every ``checkpoint_every`` steps; a
restarted job resumes from the newest one at the same data position.

Notation: ``B`` batch per process, ``N`` items, ``C`` tokens, ``D`` dims.
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

from pretrain.config import METHODS, PretrainJob, SclConfig
from pretrain.data import ItemContent, SearchPairs, load_item_content, load_search_pairs, split_heldout
from pretrain.encoder import ENCODER_FILE, MODALITY_FILES, build_encoder, load_encoder, save_encoder
from pretrain.losses import clip_loss, info_nce_loss, triplet_loss
from pretrain.momentum import make_key_encoder, momentum_update
from pretrain.queue import KeyQueue
from pretrain.towers import ItemEncoder, build_tokenizer
from recsys.data.schema import MANIFEST, Manifest
from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, write_item_vectors
from recsys.distributed import DistContext, barrier, init_distributed

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
EMBED_BATCH = 512  # items per forward when embedding the catalogue


class DualEncode(nn.Module):
    """The module DDP wraps: unit image and text vectors in one forward.

    Args:
        encoder (ItemEncoder): the towers.
    """

    def __init__(self, encoder: ItemEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 and (B, C) int64 -> two (B, D) unit tensors."""
        return self.encoder.encode_image(images), self.encoder.encode_text(tokens)


@torch.no_grad()
def embed_items(
    encoder: ItemEncoder, images: np.ndarray, tokens: torch.Tensor, device: torch.device, progress: bool = False
) -> dict[str, np.ndarray]:
    """Image, text and fused vectors of every item: each float32 (N, D')."""
    encoder.eval()
    out: dict[str, list[np.ndarray]] = {"image": [], "text": [], "item": []}
    for a in tqdm(range(0, len(images), EMBED_BATCH), desc="embed items", disable=not progress, unit="batch"):
        img = encoder.encode_image(torch.from_numpy(images[a : a + EMBED_BATCH]).to(device))
        txt = encoder.encode_text(tokens[a : a + EMBED_BATCH].to(device))
        out["image"].append(img.cpu().numpy())
        out["text"].append(txt.cpu().numpy())
        out["item"].append(encoder.fuse(img, txt).cpu().numpy())
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
    """

    def __init__(self, cfg: SclConfig, method: str, world: Path, out: Path, ctx: DistContext) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        self.cfg, self.method, self.world, self.out, self.ctx = cfg, method, Path(world), Path(out), ctx
        manifest = Manifest.read(world)
        if manifest.image_size != cfg.tower.image_size:
            raise ValueError(
                f"{world}: images are {manifest.image_size}px but tower.image_size is {cfg.tower.image_size}"
            )
        self.items: ItemContent = load_item_content(world)
        tokenize = build_tokenizer(cfg.tower)
        self.item_tokens = tokenize(self.items.titles)  # (N, C)
        self.pairs: SearchPairs = split_heldout(load_search_pairs(world, self.items), manifest.test_day)[0]
        self.query_tokens = tokenize(self.pairs.query_texts)  # (S, C)
        self.encoder = build_encoder(cfg).to(ctx.device)
        if cfg.init_from:
            try:
                self.encoder.load_state_dict(load_encoder(Path(cfg.init_from)).state_dict())
            except RuntimeError as e:  # shape mismatches
                raise ValueError(f"{cfg.init_from}: its towers differ from this config's tower section ({e})") from e
        self.encoder.clip.logit_scale.data.fill_(math.log(1.0 / cfg.temperature))
        if method == "scl":
            self.encoder.clip.logit_scale.requires_grad_(False)  # only the CLIP loss uses it
        self.key = make_key_encoder(self.encoder)
        d = cfg.tower.embed_dim
        self.queues = nn.ModuleDict({"image": KeyQueue(cfg.queue_size, d), "text": KeyQueue(cfg.queue_size, d)})
        self.queues.to(ctx.device)
        model: nn.Module = DualEncode(self.encoder)
        if ctx.world_size > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        self.model = model
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        n = len(self.pairs) if method == "scl" else len(self.items.item_ids)
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

    # -- data order ---------------------------------------------------------
    def _batch_rows(self, step: int) -> np.ndarray:
        """Rows (sessions or items) of this rank's batch at global ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:  # one permutation per epoch
            n = len(self.pairs) if self.method == "scl" else len(self.items.item_ids)
            perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            self._order = (epoch, perm[self.ctx.rank :: self.ctx.world_size])
        b = self.cfg.batch_size
        return self._order[1][k * b : (k + 1) * b]

    # -- steps --------------------------------------------------------------
    def _images(self, rows: np.ndarray, source: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(source[rows]).to(self.ctx.device)

    def _scl_loss(self, rows: np.ndarray) -> torch.Tensor:
        cfg, dev, p = self.cfg, self.ctx.device, self.pairs
        q_img, q_txt = self.model(self._images(rows, p.query_images), self.query_tokens[rows].to(dev))
        pur = p.purchased_rows[rows]
        hard = p.hard_rows[rows]  # (B, Hn), -1 padded
        mask = torch.from_numpy(hard >= 0).to(dev)
        with torch.no_grad():
            momentum_update(self.key, self.encoder, cfg.momentum)
            k_img = self.key.encode_image(self._images(pur, self.items.images))
            k_txt = self.key.encode_text(self.item_tokens[pur].to(dev))
            real = hard[hard >= 0]  # only real hard negatives go through the encoder
            h_img = k_img.new_zeros(*hard.shape, k_img.shape[1])  # (B, Hn, D), zero padded
            h_txt = torch.zeros_like(h_img)
            if len(real):
                h_img[mask] = self.key.encode_image(self._images(real, self.items.images))
                h_txt[mask] = self.key.encode_text(self.item_tokens[real].to(dev))
        # Negatives: this batch's keys and the bank, minus keys of the query's own
        # item (itself in the batch; earlier purchases of it in the bank).
        item = torch.from_numpy(self.items.item_ids[pur]).to(dev)  # (B,)
        loss = q_img.new_zeros(())
        for q, k, queue in ((q_img, k_img, self.queues["image"]), (q_txt, k_txt, self.queues["text"])):
            negatives = torch.cat([k, queue.keys()])  # (B + K', D)
            ignore = item[:, None] == torch.cat([item, queue.ids()])[None, :]  # (B, B + K')
            loss = loss + info_nce_loss(q, k, negatives, cfg.temperature, ignore)
        triplet = triplet_loss(q_img, k_img, h_img, mask, cfg.triplet_margin)
        triplet = triplet + triplet_loss(q_txt, k_txt, h_txt, mask, cfg.triplet_margin)
        self._pending_keys = (k_img, k_txt, item)
        return loss + cfg.triplet_weight * triplet

    def _clip_loss(self, rows: np.ndarray) -> torch.Tensor:
        img, txt = self.model(self._images(rows, self.items.images), self.item_tokens[rows].to(self.ctx.device))
        scale = self.encoder.clip.logit_scale.clamp(max=math.log(100.0)).exp()
        return clip_loss(img, txt, scale, self.ctx.rank, self.ctx.world_size)

    def train_step(self) -> float:
        self.model.train()
        rows = self._batch_rows(self.step)
        loss = self._scl_loss(rows) if self.method == "scl" else self._clip_loss(rows)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.method == "scl":
            k_img, k_txt, item = self._pending_keys
            self.queues["image"].enqueue(k_img, item)  # gathered from every rank inside
            self.queues["text"].enqueue(k_txt, item)
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
        if self.ctx.is_main:
            d = self.out / CHECKPOINT_DIR
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / (LATEST + ".tmp")
            torch.save(self._state(), tmp)
            tmp.replace(d / LATEST)
        barrier()

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
        """Rank 0 embeds every item and writes the vector table, encoder and manifest."""
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)  # the other ranks wait at the barrier
            try:
                vec = embed_items(self.encoder, self.items.images, self.item_tokens, self.ctx.device, progress)
            finally:
                torch.set_num_threads(threads)
            embed_s = time.perf_counter() - t
            for name, file in MODALITY_FILES.items():
                np.save(self.out / file, vec[name])
            write_item_vectors(self.out / VECTORS_FILE, self.items.item_ids, vec["item"], self.encoder.output_dim())
            digest = save_encoder(self.out / ENCODER_FILE, self.encoder, self.cfg.tower)
            manifest = {
                "method": self.method,
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
        barrier()


def run_pretrain(
    world: Path, out: Path, method: str, cfg: SclConfig, checkpoint_every: int = PretrainJob.checkpoint_every, progress: bool = True
) -> dict[str, float]:
    """``mmctr pretrain``: trains (resuming if a checkpoint exists) and exports."""
    ctx = init_distributed()
    trainer = Pretrainer(cfg, method, world, out, ctx)
    stats = trainer.fit(checkpoint_every, progress)
    trainer.export(stats, progress)
    return stats
