"""``recsys.settings``: flags derived from dataclass fields, and every default written once (CLI and TorchX)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.settings import add_settings, setting, settings_from_args


@dataclass(frozen=True)
class _Job:
    world: Path = setting(help="dataset directory")
    batch_size: int = setting(64, "items per batch")
    lr: float = setting(0.5, "learning rate")
    mode: str = setting("a", "the mode", choices=("a", "b"))
    day: int | None = setting(None, "the day (default: the last)")
    hidden: tuple[int, ...] = setting((8, 4), "hidden widths")
    quiet: bool = setting(False, "no progress bar")
    fused: bool = setting(True, "fused kernels")
    timeout_s: float = setting(10.0, "deadline, seconds", flag="--timeout", metavar="S")
    internal: int = 3  # not a setting: no flag


def _parser(**kwargs: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job", exit_on_error=False)
    add_settings(parser, _Job, **kwargs)  # type: ignore[arg-type]
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}


def test_flags_follow_the_fields() -> None:
    actions = _actions(_parser())
    assert list(actions) == ["world", "batch_size", "lr", "mode", "day", "hidden", "quiet", "fused", "timeout_s"]
    assert actions["world"].required and actions["world"].type is Path and actions["world"].help == "dataset directory"
    assert actions["batch_size"].option_strings == ["--batch-size"] and actions["batch_size"].type is int
    assert actions["batch_size"].help == "items per batch (default: 64)"
    assert actions["lr"].type is float and actions["lr"].help == "learning rate (default: 0.5)"
    assert actions["mode"].choices == ("a", "b")
    assert actions["day"].type is int and actions["day"].default is None and actions["day"].help == "the day (default: the last)"
    assert actions["hidden"].nargs == "+" and actions["hidden"].help == "hidden widths (default: 8 4)"
    assert isinstance(actions["quiet"], argparse._StoreTrueAction) and actions["quiet"].help == "no progress bar"
    assert actions["fused"].option_strings == ["--fused", "--no-fused"]
    assert actions["timeout_s"].option_strings == ["--timeout"] and actions["timeout_s"].metavar == "S"
    assert actions["timeout_s"].help == "deadline, seconds (default: 10)"


def test_parsed_flags_build_the_dataclass() -> None:
    args = _parser().parse_args(["--world", "w", "--hidden", "3", "2", "--no-fused", "--timeout", "2", "--quiet"])
    job = settings_from_args(_Job, args)
    assert job == _Job(world=Path("w"), hidden=(3, 2), fused=False, timeout_s=2.0, quiet=True)
    assert settings_from_args(_Job, args, world=Path("x")).world == Path("x")  # a value the command resolved wins
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(["--world", "w", "--mode", "c"])


def test_only_exclude_required_defaults() -> None:
    assert list(_actions(_parser(only=("lr", "batch_size")))) == ["lr", "batch_size"]
    assert "hidden" not in _actions(_parser(exclude=("hidden",)))
    required = _actions(_parser(only=("batch_size",), required=("batch_size",)))["batch_size"]
    assert required.required and required.help == "items per batch"
    other = _actions(_parser(only=("batch_size",), defaults={"batch_size": 16}))["batch_size"]
    assert other.default == 16 and other.help == "items per batch (default: 16)"
    with pytest.raises(ValueError, match="_Job.internal is not a setting"):
        _parser(only=("internal",))


def test_override_flags_replace_only_what_is_given() -> None:
    parser = _parser(only=("batch_size", "day"), override=True)
    assert _actions(parser)["batch_size"].help == "items per batch (default: the config file's, else 64)"
    base = _Job(world=Path("w"), batch_size=512, day=3)
    assert settings_from_args(_Job, parser.parse_args([]), base=base) == base
    assert settings_from_args(_Job, parser.parse_args(["--day", "5"]), base=base) == dataclasses.replace(base, day=5)


# -- every flag's default is its dataclass field's -------------------------------------------------


def _command_settings() -> dict[str, list[type]]:
    """The dataclasses each ``mmctr`` subcommand takes its settings from."""
    from pretrain.config import PretrainJob, SclConfig
    from recsys.eval.evaluate import EvalJob
    from recsys.models.config import ModelConfig
    from recsys.pipeline.config import PipelineJob
    from recsys.train.config import TrainConfig
    from recsys.train.retrain import RetrainJob
    from recsys.train.trainer import TrainJob
    from pretrain.sentence import SentenceJob
    from recsys.world.config import WorldFormat, WorldJob
    from recsys.world.ml100k import Ml100kJob
    from serving.client import ClientConfig
    from serving.embedder import EmbedderConfig
    from serving.constants import ExportConfig
    from serving.feed import PublishConfig
    from serving.ranker_export import RankerExportConfig
    from serving.ranker_online import OnlineEvalConfig
    from serving.server import ServerConfig

    return {
        "world": [WorldJob, WorldFormat], "pretrain": [PretrainJob, SclConfig], "train": [ModelConfig, TrainConfig, TrainJob],
        "retrain": [RetrainJob], "export": [ExportConfig], "serve": [ServerConfig],
        "embed-new": [ClientConfig, EmbedderConfig], "feed": [PublishConfig], "evaluate": [EvalJob],
        "pipeline": [PipelineJob], "demo": [PipelineJob], "import-ml100k": [Ml100kJob], "embed-text": [SentenceJob],
        "export-ranker": [RankerExportConfig, ClientConfig], "rank": [RankerExportConfig, ClientConfig],
        "online-eval": [OnlineEvalConfig, RankerExportConfig, ClientConfig],
    }  # fmt: skip


def _field_default(classes: list[type], dest: str) -> object:
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == dest and f.default is not dataclasses.MISSING:
                return f.default
    return dataclasses.MISSING


def test_every_cli_default_is_its_dataclass_default() -> None:
    from recsys.cli import build_parser
    from serving.server import GRPC_PORT, HTTP_PORT

    # the one documented difference: `mmctr serve` binds Triton's own ports, a library TritonServer free ones
    differ = {("serve", "grpc_port"): GRPC_PORT, ("serve", "http_port"): HTTP_PORT}
    settings = _command_settings()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.required:
                continue
            expected = differ.get((command, action.dest), _field_default(settings.get(command, []), action.dest))
            if action.default is argparse.SUPPRESS:  # overrides a config file's value: the field's default applies
                assert expected is not dataclasses.MISSING, f"mmctr {command} {action.option_strings}: no field"
                continue
            if action.default in (None, False) and expected is dataclasses.MISSING:
                continue  # an optional path or switch of the command itself: no value to repeat
            assert expected is not dataclasses.MISSING, (
                f"mmctr {command} {action.option_strings} has default {action.default!r} written in the CLI; "
                "declare it with recsys.settings.setting on the dataclass the command builds"
            )
            assert action.default == expected, f"mmctr {command} {action.option_strings}"
            checked += 1
    assert checked > 20


def test_torchx_component_defaults_are_the_stages_defaults() -> None:
    from pretrain.config import PretrainJob
    from recsys.models.config import ModelConfig
    from recsys.train.retrain import RetrainJob
    from recsys.train.trainer import TrainJob
    from recsys.world.config import WorldJob
    from serving.client import ClientConfig
    from serving.embedder import EmbedderConfig
    from serving.constants import ExportConfig
    from serving.ranker_export import RankerExportConfig
    from serving.ranker_online import OnlineEvalConfig
    from serving.server import GRPC_PORT, HTTP_PORT, ServerConfig
    from torchx_components import evaluate, pipeline, serving

    expected = {
        (pipeline.world, "preset"): WorldJob.preset, (pipeline.world, "seed"): WorldJob.seed,
        (pipeline.pretrain, "method"): PretrainJob.method,
        (pipeline.train, "variant"): ModelConfig.variant, (pipeline.train, "sharding"): TrainJob.sharding,
        (pipeline.retrain, "sharding"): RetrainJob.sharding,
        (serving.export, "max_batch_size"): ExportConfig.max_batch_size,
        (serving.export, "torch_threads"): ExportConfig.torch_threads,
        (serving.embed_new, "url"): ClientConfig.url, (serving.embed_new, "batch_size"): EmbedderConfig.batch_size,
        (serving.serve, "grpc_port"): GRPC_PORT, (serving.serve, "http_port"): HTTP_PORT,
        (serving.serve, "model_control"): ServerConfig.model_control,
        (serving.export_ranker, "precision"): RankerExportConfig.precision, (serving.export_ranker, "name"): RankerExportConfig.name,
        (serving.online_eval, "users"): OnlineEvalConfig.users, (serving.online_eval, "seed"): OnlineEvalConfig.seed,
        (serving.online_eval, "name"): RankerExportConfig.name,
        (serving.online_eval, "max_candidates"): RankerExportConfig.max_candidates,
    }  # fmt: skip
    resources = {"nproc", "nnodes", "image", "cpu", "memMB", "retrain_make"}
    components = [pipeline.world, pipeline.pretrain_eval, pipeline.pretrain, pipeline.train, pipeline.retrain,
                  serving.export, serving.embed_new, serving.serve, serving.feed, serving.export_ranker,
                  serving.online_eval, evaluate.evaluate]  # fmt: skip
    for fn in components:
        for name, p in inspect.signature(fn).parameters.items():
            if p.default is inspect.Parameter.empty or p.default is None or name in resources:
                continue
            assert (fn, name) in expected, f"{fn.__name__}({name}={p.default!r}): a stage default not checked here"
            assert p.default == expected[fn, name], f"{fn.__name__}({name})"
