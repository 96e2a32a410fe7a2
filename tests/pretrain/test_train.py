"""Pre-training end to end on the tiny world: export, training, resume, 2-rank DDP, TorchX, evaluation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp

from pretrain.config import SclConfig, TowerConfig
from pretrain.data import ItemContent, load_item_content, load_search_pairs, split_heldout
from pretrain.encoder import ENCODER_FILE, MODALITY_FILES, build_encoder, load_encoder
from pretrain.evaluate import RECALL_KS, evaluate_runs, neighbour_purity, recall_at_k
from pretrain.queue import KeyQueue
from pretrain.reduce import principal_basis, reduce_run
from pretrain.towers import build_tokenizer
from pretrain.train import CHECKPOINT_DIR, LATEST, Pretrainer, run_pretrain
from recsys.cli import main as cli_main
from recsys.data.schema import MANIFEST, Manifest, table_files
from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, load_vectors, read_item_vectors
from recsys.distributed import DistContext

REPO = Path(__file__).resolve().parents[2]
TOWER = TowerConfig(
    vision_width=32, vision_heads=2, vision_layers=1, text_width=32, text_heads=2, text_layers=1, embed_dim=16
)
D = TOWER.embed_dim
B = 16  # batch per process
STEPS = 4
CFG = SclConfig(tower=TOWER, batch_size=B, queue_size=64, max_steps=STEPS, warmup_steps=1)
EVAL_KEYS = {"image_recall@1", "image_recall@10", "text_recall@1", "text_recall@10", "purity@10"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _initial_state(cfg: SclConfig) -> dict[str, torch.Tensor]:
    """The encoder before training, as the trainer sets it up (logit scale at 1/tau)."""
    enc = build_encoder(cfg)
    enc.clip.logit_scale.data.fill_(math.log(1.0 / cfg.temperature))
    return enc.state_dict()


def _world_item_ids(world: Path) -> np.ndarray:
    files = table_files(world, "items")
    return np.concatenate([pq.read_table(f, columns=["item_id"])["item_id"].to_numpy() for f in files])


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread in this process, as each torchrun rank has.

    Tiny towers gain nothing from a second thread; on a shared 2-core machine it fights other work.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, float]]]:
    """One run per method on the tiny world, in this process: method -> (run dir, stats)."""
    root = tmp_path_factory.mktemp("pretrain")
    return {
        m: (root / m, run_pretrain(tiny_world, root / m, m, CFG, checkpoint_every=2, progress=False))
        for m in ("scl", "clip", "random")
    }


@pytest.fixture(scope="module")
def items(tiny_world: Path) -> ItemContent:
    return load_item_content(tiny_world)


# -- export -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["scl", "clip", "random"])
def test_vector_table_covers_every_item_once_with_unit_float32_rows(method: str, runs: dict, tiny_world: Path) -> None:
    run, _ = runs[method]
    field = pq.read_schema(run / VECTORS_FILE).field("vector")
    assert str(field.type.value_type) == "float" and field.type.list_size == D
    ids, vectors = read_item_vectors(run / VECTORS_FILE)
    world_ids = _world_item_ids(tiny_world)
    assert len(ids) == len(np.unique(ids)) == len(world_ids)
    assert set(ids.tolist()) == set(world_ids.tolist())
    assert vectors.dtype == np.float32 and vectors.shape == (len(world_ids), D)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for file in MODALITY_FILES.values():
        per_modality = np.load(run / file)
        assert per_modality.shape == (len(world_ids), D) and per_modality.dtype == np.float32


@pytest.mark.parametrize("method", ["scl", "clip", "random"])
def test_manifest_names_method_dim_and_hashes(method: str, runs: dict, tiny_world: Path) -> None:
    run, _ = runs[method]
    meta = json.loads((run / VECTORS_MANIFEST).read_text())
    assert meta["method"] == method and meta["dim"] == D
    assert meta["items"] == len(_world_item_ids(tiny_world)) and meta["world_size"] == 1
    assert meta["encoder_sha256"] == _sha256(run / ENCODER_FILE)
    assert meta["world_manifest_sha256"] == _sha256(tiny_world / MANIFEST)


@pytest.mark.parametrize("method", ["scl", "clip", "random"])
def test_load_encoder_reproduces_exported_vectors(method: str, runs: dict, items: ItemContent) -> None:
    run, _ = runs[method]
    ids, vectors = read_item_vectors(run / VECTORS_FILE)
    encoder = load_encoder(run / ENCODER_FILE)
    assert not encoder.training and encoder.output_dim() == D
    rows = np.array([0, 1, 777, len(items.item_ids) - 1])
    tokens = build_tokenizer(TOWER)([items.titles[r] for r in rows])
    with torch.no_grad():
        img = encoder.encode_image(torch.from_numpy(items.images[rows]))
        txt = encoder.encode_text(tokens)
        fused = encoder.fuse(img, txt).numpy()
    table_rows = np.searchsorted(ids, items.item_ids[rows])
    assert (ids[table_rows] == items.item_ids[rows]).all()
    np.testing.assert_allclose(fused, vectors[table_rows], atol=1e-5)
    np.testing.assert_allclose(img.numpy(), np.load(run / MODALITY_FILES["image"])[rows], atol=1e-5)
    np.testing.assert_allclose(txt.numpy(), np.load(run / MODALITY_FILES["text"])[rows], atol=1e-5)


# -- training -----------------------------------------------------------------
@pytest.mark.parametrize("method", ["scl", "clip"])
def test_training_changes_both_towers_and_loss_is_finite(method: str, runs: dict) -> None:
    run, stats = runs[method]
    assert stats["steps"] == STEPS and stats["resumed"] == 0
    assert math.isfinite(stats["final_loss"]) and stats["samples_per_s_per_process"] > 0
    before, after = _initial_state(CFG), torch.load(run / ENCODER_FILE, weights_only=True)["state_dict"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for tower in ("clip.visual.transformer.", "clip.transformer.", "clip.token_embedding."):
        assert any(k.startswith(tower) for k in changed), f"{method}: no {tower} weight changed"
    # SCL freezes the CLIP logit scale (only the CLIP loss uses it); CLIP learns it.
    assert ("clip.logit_scale" in changed) == (method == "clip")


def test_random_exports_the_initial_towers(runs: dict) -> None:
    run, stats = runs["random"]
    assert stats["steps"] == 0 and not (run / CHECKPOINT_DIR).exists()
    before, after = _initial_state(CFG), torch.load(run / ENCODER_FILE, weights_only=True)["state_dict"]
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


def test_scl_checkpoint_holds_a_filled_queue(runs: dict) -> None:
    run, _ = runs["scl"]
    state = torch.load(run / CHECKPOINT_DIR / LATEST, weights_only=True)
    assert state["step"] == STEPS and state["method"] == "scl"
    for modality in ("image", "text"):
        assert int(state["queues"][f"{modality}.count"]) == STEPS * B
        bank = state["queues"][f"{modality}.bank"]  # (K, D), full: STEPS * B > K
        assert STEPS * B >= CFG.queue_size
        np.testing.assert_allclose(bank.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert not torch.equal(state["key"]["clip.visual.proj"], state["encoder"]["clip.visual.proj"])


@pytest.mark.parametrize("triplet_weight", [0.0, 0.5])
def test_scl_encodes_hard_negatives_only_for_the_triplet_term(triplet_weight: float, tiny_world: Path, tmp_path: Path) -> None:
    """lambda 0 (the pipeline's recipe): the key encoder sees the purchased items alone; else their hard negatives too."""
    trainer = Pretrainer(dataclasses.replace(CFG, triplet_weight=triplet_weight), "scl", tiny_world, tmp_path,
                         DistContext(0, 1, torch.device("cpu")))
    seen: list[int] = []
    trainer.key.clip.visual.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    rows = trainer._batch_rows(0)
    loss = trainer._scl_loss(rows)
    hard = int((trainer.pairs.hard_rows[rows] >= 0).sum())
    assert hard > 0 and math.isfinite(loss.item())
    assert seen == ([B, hard] if triplet_weight else [B])


class _Crash(RuntimeError):
    """The simulated failure of a job between checkpoints."""


@pytest.mark.parametrize("method", ["scl", "clip"])
def test_restart_resumes_from_checkpoint_and_equals_an_uninterrupted_run(
    method: str, tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same config (5 steps, a checkpoint every 2); the first attempt dies after step 3, so the
    # restart must go back to the step-2 checkpoint and redo step 3 on the same data.
    cfg, every, crash_at = dataclasses.replace(CFG, max_steps=5), 2, 3
    real_step = Pretrainer.train_step

    def crashing_step(self: Pretrainer) -> float:
        if self.step == crash_at:
            raise _Crash(f"killed at step {self.step}")
        return real_step(self)

    monkeypatch.setattr(Pretrainer, "train_step", crashing_step)
    with pytest.raises(_Crash):
        run_pretrain(tiny_world, tmp_path / "restarted", method, cfg, checkpoint_every=every, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "restarted" / CHECKPOINT_DIR / LATEST, weights_only=True)["step"] == 2
    assert not (tmp_path / "restarted" / VECTORS_FILE).exists()

    resumed = run_pretrain(tiny_world, tmp_path / "restarted", method, cfg, checkpoint_every=every, progress=False)
    straight = run_pretrain(tiny_world, tmp_path / "straight", method, cfg, checkpoint_every=every, progress=False)
    assert resumed["resumed"] == 1 and straight["resumed"] == 0
    assert resumed["steps"] == straight["steps"] == 5
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], abs=1e-5)
    a = torch.load(tmp_path / "restarted" / CHECKPOINT_DIR / LATEST, weights_only=True)
    b = torch.load(tmp_path / "straight" / CHECKPOINT_DIR / LATEST, weights_only=True)
    for part in ("encoder", "key", "queues"):
        for k in b[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=1e-5, msg=f"{part}.{k}")
    restarted_vectors = read_item_vectors(tmp_path / "restarted" / VECTORS_FILE)[1]
    np.testing.assert_allclose(restarted_vectors, read_item_vectors(tmp_path / "straight" / VECTORS_FILE)[1], atol=1e-5)


def test_two_rank_ddp_scl_gathers_keys_of_both_ranks(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spawned children import the worker by module name: put its folder on sys.path (inherited).
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import train_workers

    steps, world_size = 3, 2
    cfg = dataclasses.replace(CFG, max_steps=steps)
    out, report = tmp_path / "run", tmp_path / "report"
    report.mkdir()
    mp.spawn(
        train_workers.pretrain_worker,
        args=(world_size, _free_port(), str(tiny_world), str(out), str(report), cfg),
        nprocs=world_size,
        join=True,
    )
    sys.modules.pop("train_workers", None)

    reports = [json.loads((report / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert [r["stats"]["steps"] for r in reports] == [steps, steps]
    assert [r["writes"] for r in reports] == [1, 0]  # the table is written once, by rank 0
    assert json.loads((out / VECTORS_MANIFEST).read_text())["world_size"] == world_size
    ids, _ = read_item_vectors(out / VECTORS_FILE)
    assert len(ids) == len(_world_item_ids(tiny_world))
    encoders = [torch.load(report / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    for k in encoders[0]:  # DDP kept the replicas identical
        torch.testing.assert_close(encoders[1][k], encoders[0][k], rtol=0, atol=0)

    state = torch.load(out / CHECKPOINT_DIR / LATEST, weights_only=True)
    assert state["step"] == steps
    for modality in ("image", "text"):
        assert int(state["queues"][f"{modality}.count"]) == steps * B * world_size

    # Reference: the newest 2B keys are the key encoder's vectors of the last step's purchased
    # items, rank 0's batch then rank 1's (each rank takes every 2nd row of the seeded order).
    items = load_item_content(tiny_world)
    pairs = split_heldout(load_search_pairs(tiny_world, items), Manifest.read(tiny_world).test_day)[0]
    per_epoch = (len(pairs) // world_size) // B
    assert steps <= per_epoch
    perm = np.random.default_rng([cfg.seed, 0]).permutation(len(pairs))
    last = steps - 1
    rows = np.concatenate([perm[r::world_size][last * B : (last + 1) * B] for r in range(world_size)])
    purchased = pairs.purchased_rows[rows]
    key = build_encoder(cfg)
    key.load_state_dict(state["key"])
    with torch.no_grad():
        want = {
            "image": key.encode_image(torch.from_numpy(items.images[purchased])),
            "text": key.encode_text(build_tokenizer(TOWER)([items.titles[p] for p in purchased])),
        }
    for modality in ("image", "text"):
        bank = KeyQueue(cfg.queue_size, D)
        prefix = modality + "."
        bank.load_state_dict({k[len(prefix) :]: v for k, v in state["queues"].items() if k.startswith(prefix)})
        torch.testing.assert_close(bank.keys()[-world_size * B :], want[modality], rtol=0, atol=1e-5)


def _content_cache_ranks(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    import train_workers

    report = tmp_path / "report"
    report.mkdir()
    mp.spawn(train_workers.content_cache_worker,
             args=(2, _free_port(), str(world), str(tmp_path / "run"), str(tmp_path / "cache"), str(report), CFG),
             nprocs=2, join=True)
    sys.modules.pop("train_workers", None)
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_decode_the_content_once_then_read_the_cache(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rank0, rank1 = _content_cache_ranks(tiny_world, tmp_path, monkeypatch)
    assert (rank0["computed"], rank1["computed"]) == (1, 0)  # rank 0 made the entry; rank 1 only read it
    items = load_item_content(tiny_world)
    tokens = build_tokenizer(TOWER)(items.titles)
    for rank in (rank0, rank1):
        assert rank["item_ids"] == items.item_ids.tolist()
        assert rank["image_sum"] == int(items.images.sum(dtype=np.int64)) and rank["token_sum"] == int(tokens.sum())
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_bad_image_fails_every_rank_naming_the_item(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = tmp_path / "w"
    shutil.copytree(tiny_world, world)
    file = table_files(world, "items")[0]
    t = pq.read_table(file)
    images = t["image"].to_pylist()
    images[3] = b"not an image"
    pq.write_table(t.set_column(t.schema.get_field_index("image"), "image", [images]), file)
    item = t["item_id"][3].as_py()
    rank0, rank1 = _content_cache_ranks(world, tmp_path, monkeypatch)
    assert rank0["raised"] == "ValueError" and f"(item {item})" in rank0["message"] and file.name in rank0["message"]
    assert rank1["raised"] == "MainRankError" and rank0["message"] in rank1["message"] and rank1["computed"] == 0
    assert not (tmp_path / "cache").exists() or not any(p.name[0] != "." for p in (tmp_path / "cache").iterdir())


# -- bad input ----------------------------------------------------------------
def test_unknown_method_is_rejected(tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"unknown method 'unknown'; choose one of \['scl', 'clip', 'random'\]"):
        run_pretrain(tiny_world, tmp_path / "run", "unknown", CFG, progress=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pretrain", "--method", "unknown", "--world", str(tiny_world), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "invalid choice: 'unknown'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_world_image_size_must_match_the_tower(tiny_world: Path, tmp_path: Path) -> None:
    px = Manifest.read(tiny_world).image_size
    cfg = dataclasses.replace(CFG, tower=dataclasses.replace(TOWER, image_size=px // 2))
    with pytest.raises(ValueError, match=rf"images are {px}px but tower.image_size is {px // 2}"):
        run_pretrain(tiny_world, tmp_path / "run", "scl", cfg, progress=False)


# -- the TorchX component -----------------------------------------------------
def test_torchx_component_runs_two_processes_locally(tiny_world: Path, tmp_path: Path) -> None:
    config = tmp_path / "scl.yaml"
    tower = "\n".join(f"  {k}: {v}" for k, v in dataclasses.asdict(TOWER).items())
    config.write_text(f"batch_size: {B}\nqueue_size: 64\nwarmup_steps: 1\ntower:\n{tower}\n")
    out = tmp_path / "run"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's torchx, torchrun
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [
        "torchx", "run", "-s", "local_cwd", "torchx_components/pipeline.py:pretrain",
        "--world", str(tiny_world), "--out", str(out), "--nproc", "2", "--max_steps", "2", "--config", str(config),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((out / VECTORS_MANIFEST).read_text())
    assert meta["method"] == "scl" and meta["world_size"] == 2 and meta["steps"] == 2 and meta["dim"] == D
    ids, vectors = read_item_vectors(out / VECTORS_FILE)
    assert len(ids) == len(_world_item_ids(tiny_world)) and vectors.shape[1] == D


# -- evaluation ---------------------------------------------------------------
def test_pretrain_eval_reports_recall_and_purity_per_run(
    runs: dict, tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = [runs[m][0] for m in ("scl", "clip", "random")]
    results = evaluate_runs(tiny_world, dirs)
    assert list(results) == ["scl", "clip", "random"]
    for row in results.values():
        assert set(row) == EVAL_KEYS | {"queries"} and row["queries"] > 0
        assert all(0.0 <= row[k] <= 1.0 for k in EVAL_KEYS)
        assert row["image_recall@1"] <= row["image_recall@10"] and row["text_recall@1"] <= row["text_recall@10"]
    out = tmp_path / "eval.json"
    argv = ["pretrain-eval", "--world", str(tiny_world), "--runs", *map(str, dirs[:2]), "--json", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "image_recall@10" in printed and "purity@10" in printed
    assert json.loads(out.read_text()) == {m: results[m] for m in ("scl", "clip")}


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_at_k_matches_a_plain_reference() -> None:
    rng = np.random.default_rng(0)
    queries, items = _unit(rng, 1100, 8), _unit(rng, 300, 8)  # 1100 queries: more than one score chunk
    target = rng.integers(0, 300, 1100)
    ks = (1, 5, 10, *RECALL_KS)  # RECALL_KS repeats 1 and 10: each k must still count once
    got = recall_at_k(queries, items, target, ks)
    order = np.argsort(-(queries @ items.T), axis=1)
    for k in ks:
        assert got[k] == pytest.approx(np.mean([t in order[i, :k] for i, t in enumerate(target)]))
    assert recall_at_k(items, items, np.arange(300), (1,))[1] == 1.0  # every item finds itself


def test_neighbour_purity_matches_a_plain_reference() -> None:
    rng = np.random.default_rng(1)
    vectors, categories = _unit(rng, 1200, 8), rng.integers(0, 5, 1200)
    sample = rng.choice(1200, size=1100, replace=False)  # > one score chunk
    shares = []
    for r in sample:
        s = vectors[r] @ vectors.T
        s[r] = -np.inf
        shares.append(np.mean(categories[np.argsort(-s)[:10]] == categories[r]))
    assert neighbour_purity(vectors, categories, sample, k=10) == pytest.approx(np.mean(shares), abs=1e-9)
    assert neighbour_purity(vectors, np.zeros(1200, dtype=np.int64), sample, k=10) == 1.0


def test_init_from_starts_from_another_runs_encoder(runs: dict, tiny_world: Path, tmp_path: Path) -> None:
    # A `random` run started from the trained scl encoder exports that encoder's vectors.
    source = runs["scl"][0]
    cfg = dataclasses.replace(CFG, init_from=str(source / ENCODER_FILE), seed=123)
    run_pretrain(tiny_world, tmp_path / "ft", "random", cfg, progress=False)
    _, want = read_item_vectors(source / VECTORS_FILE)
    _, got = read_item_vectors(tmp_path / "ft" / VECTORS_FILE)
    np.testing.assert_allclose(got, want, atol=1e-5)
    bigger = dataclasses.replace(CFG, tower=dataclasses.replace(TOWER, embed_dim=2 * D), init_from=str(source / ENCODER_FILE))
    with pytest.raises(ValueError, match="towers differ"):
        run_pretrain(tiny_world, tmp_path / "bad", "random", bigger, progress=False)


# -- reduced vectors ----------------------------------------------------------
def test_reduce_vectors_projects_the_table_and_the_encoder_alike(runs: dict, items: ItemContent, tmp_path: Path) -> None:
    run, _ = runs["scl"]
    out, K = tmp_path / "scl-4", 4
    assert cli_main(["reduce-vectors", "--run", str(run), "--dim", str(K), "--out", str(out)]) == 0
    ids, source = read_item_vectors(run / VECTORS_FILE)
    got_ids, reduced = read_item_vectors(out / VECTORS_FILE)
    assert (got_ids == ids).all() and reduced.shape == (len(ids), K)
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    # Plain reference: the top-K eigenvectors of X^T X. Cosines between items do not depend on their signs.
    x = source.astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(x.T @ x)
    top = eigenvectors[:, ::-1][:, :K]
    ref = x @ top
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    sample = np.random.default_rng(0).choice(len(ids), 200, replace=False)
    np.testing.assert_allclose(reduced[sample] @ reduced[sample].T, ref[sample] @ ref[sample].T, atol=1e-4)
    # The reduced encoder embeds items as the table has them (new items share the basis).
    encoder = load_encoder(out / ENCODER_FILE)
    assert encoder.output_dim() == K
    rows = np.array([0, 5, len(items.item_ids) - 1])
    tokens = build_tokenizer(TOWER)([items.titles[r] for r in rows])
    with torch.no_grad():
        embedded = encoder(torch.from_numpy(items.images[rows]), tokens).numpy()
    np.testing.assert_allclose(embedded, reduced[np.searchsorted(ids, items.item_ids[rows])], atol=1e-5)
    meta = json.loads((out / VECTORS_MANIFEST).read_text())
    assert meta["dim"] == K and meta["method"] == "scl" and meta["items"] == len(ids)
    assert meta["encoder_sha256"] == _sha256(out / ENCODER_FILE)
    source_meta = meta["reduced_from"]
    assert source_meta["run"] == str(run) and source_meta["dim"] == D
    assert source_meta["encoder_sha256"] == _sha256(run / ENCODER_FILE)
    assert source_meta["retained_energy"] == pytest.approx(eigenvalues[::-1][:K].sum() / eigenvalues.sum(), rel=1e-6)
    assert load_vectors(out).dim == K  # the CTR side reads it as any run


def test_reduce_vectors_refuses_bad_requests_and_keeps_the_source(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = runs["scl"]
    before = {f.name: _sha256(f) for f in run.iterdir() if f.is_file()}
    assert cli_main(["reduce-vectors", "--run", str(run), "--dim", "0", "--out", str(tmp_path / "z")]) == 1
    err = capsys.readouterr().err
    assert f"mmctr reduce-vectors: {run / 'item_vectors.parquet'}: 16-d vectors; --dim must be in 1..16, got 0" in err
    with pytest.raises(ValueError, match=r"item_vectors.parquet: 16-d vectors; --dim must be in 1..16, got 17"):
        reduce_run(run, 17, tmp_path / "a")
    with pytest.raises(ValueError, match="folder of its own"):
        reduce_run(run, 4, run)
    with pytest.raises(FileNotFoundError, match="encoder.pt: missing"):
        reduce_run(tmp_path, 4, tmp_path / "b")
    reduce_run(run, 8, tmp_path / "c")
    with pytest.raises(ValueError, match="already reduced to 8"):
        reduce_run(tmp_path / "c", 4, tmp_path / "d")
    kept = {f.name: _sha256(f) for f in (tmp_path / "c").iterdir()}
    with pytest.raises(ValueError, match=r"already holds \['encoder.pt', 'item_vectors.parquet', 'vectors.json'\]"):
        reduce_run(run, 4, tmp_path / "c")  # another run's folder is not overwritten
    assert {f.name: _sha256(f) for f in (tmp_path / "c").iterdir()} == kept
    assert {f.name: _sha256(f) for f in run.iterdir() if f.is_file()} == before


def test_principal_basis_is_the_same_for_flipped_rows() -> None:
    x = np.random.default_rng(0).standard_normal((50, 6))
    basis = principal_basis(x, 3)
    np.testing.assert_allclose(principal_basis(-x, 3), basis, atol=1e-6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-6)
    with pytest.raises(ValueError, match="row 2 is not finite"):
        principal_basis(np.where(np.arange(6) == 2, np.nan, 1.0)[:, None] * np.ones((6, 3)), 2)
