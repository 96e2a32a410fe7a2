"""The ``mmctr`` console script end to end: exit codes and messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.schema import table_files


def _mmctr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True)


def test_validate_exit_codes(tiny_world: Path, tmp_path: Path) -> None:
    ok = _mmctr("validate", str(tiny_world), "--quiet")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: "), ok.stderr
    world = tmp_path / "w"
    shutil.copytree(tiny_world, world)
    f = table_files(world, "impressions")[0]
    t = pq.read_table(f)
    labels = t["label"].to_pylist()
    labels[3] = 2.0
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.float32()))
    pq.write_table(t, f)
    bad = _mmctr("validate", str(world), "--quiet")
    assert bad.returncode == 1
    assert f"{f.relative_to(world)}: column 'label', row 3: value 2.0" in bad.stderr


def test_world_command_writes_a_valid_world(tmp_path: Path) -> None:
    out = _mmctr("world", "--preset", "tiny", "--seed", "3", "--out", str(tmp_path / "w"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "impressions" in out.stdout and (tmp_path / "w" / "manifest.json").is_file()
    assert _mmctr("validate", str(tmp_path / "w"), "--quiet").returncode == 0


def test_help_builds_only_the_asked_command() -> None:
    code = ("import sys\nfrom recsys.cli import main\nfor argv in (['--help'], ['world', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'mmctr --help loaded torch'\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "world size (default: small)" in out.stdout


def test_train_flags_override_the_job_file(tmp_path: Path) -> None:
    from recsys.cli import build_parser
    from recsys.models.config import ModelConfig
    from recsys.settings import settings_from_args
    from recsys.train.config import TrainConfig, load_job_config

    job = tmp_path / "job.yaml"
    job.write_text("model:\n  variant: make\ntrain:\n  seed: 3\n  epochs: 2\n")
    args = build_parser({"train"}).parse_args(["train", "--world", "w", "--out", "o", "--config", str(job), "--seed", "5"])
    model, train = load_job_config(args.config)
    assert settings_from_args(ModelConfig, args, base=model).variant == "make"  # no --variant: the file's
    assert settings_from_args(TrainConfig, args, base=train) == TrainConfig(seed=5, epochs=2)
    assert args.sharding == "auto"


def test_train_variant_flag_picks_the_variants_simtier_form(tmp_path: Path) -> None:
    from recsys.cli import build_parser, train_configs
    from recsys.models.config import ModelConfig

    def model(*flags: str) -> ModelConfig:
        args = build_parser({"train"}).parse_args(["train", "--world", "w", "--out", "o", *flags])
        return train_configs(args)[0]

    form = lambda c: (c.variant, c.simtier_soft, c.simtier_learned_metric, c.simtier_tiers)  # noqa: E731
    # as the pipeline runs it: --variant with a job file of another (or no) variant
    assert form(model("--variant", "simtier_make")) == ("simtier_make", False, False, 20)
    assert form(model("--variant", "simtier")) == ("simtier", True, True, 50)
    job = tmp_path / "job.yaml"
    job.write_text("model:\n  variant: simtier\n  make_frozen: true\n")
    got = model("--config", str(job), "--variant", "simtier_make")
    assert form(got) == ("simtier_make", False, False, 20) and got.make_frozen
    assert form(model("--config", str(job))) == ("simtier", True, True, 50)
    job.write_text("model:\n  simtier_tiers: 50\n")  # a field the file sets is kept
    assert form(model("--config", str(job), "--variant", "simtier_make")) == ("simtier_make", False, False, 50)


def test_train_refuses_a_bad_job_file_in_one_line(tiny_world: Path, tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  mm_widht: 32\n")
    negative = tmp_path / "negative.yaml"
    negative.write_text("model:\n  mm_width: -4\n")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("model: 5\n")
    (tmp_path / "folder.yaml").mkdir()
    for config, message in ((typo, "unknown key(s) ['mm_widht']"), (negative, "mm_width"),
                            (tmp_path / "absent.yaml", "absent.yaml"), (scalar, "section 'model' must be a mapping"),
                            (tmp_path / "folder.yaml", "folder.yaml")):
        got = _mmctr("train", "--world", str(tiny_world), "--out", str(tmp_path / "run"), "--config", str(config))
        assert got.returncode == 1, got.stderr
        lines = got.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mmctr train: ") and message in lines[0], got.stderr
        assert "Traceback" not in got.stderr
