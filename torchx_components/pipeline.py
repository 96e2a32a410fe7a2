"""TorchX components of the mmctr pipeline: each launches one ``mmctr`` stage.

Every component is ``torchx.components.dist.torchrun`` over ``python -m
recsys.cli STAGE ...`` (torchrun sets rank and world size; the stage makes a
gloo group on CPU or NCCL on GPU). Run locally::

    torchx run -s local_cwd torchx_components/pipeline.py:pretrain \\
        --world runs/demo/world --out runs/demo/pretrain-scl --nproc 2

On a cluster scheduler (``-s kubernetes`` or ``-s slurm``) the same
components run with ``image`` pointing at a container with this project
installed and paths on shared storage.

Example::

    >>> app = pretrain(world="w", out="o", nproc=2, max_steps=5)
    >>> cmd = app.roles[0].args[-1]
    >>> "--nproc_per_node 2" in cmd, cmd.split(" -m ")[1]
    (True, 'recsys.cli pretrain --method scl --world w --out o --quiet --max-steps 5')
"""

# No `from __future__ import annotations`: TorchX reads the real annotation
# objects to parse component arguments.
from typing import Optional

from torchx import specs
from torchx.components.dist import torchrun

DEFAULT_IMAGE = "mmctr:latest"  # for container schedulers; local_cwd ignores it
_MODULE = "recsys.cli"


def _stage(name: str, args: list[str], nproc: int, image: str, cpu: int, memMB: int) -> specs.AppDef:
    """One ``mmctr`` stage under torchrun, ``nproc`` processes on one node."""
    return torchrun(name, *args, m=_MODULE, image=image, name=f"mmctr-{name}", j=f"1x{nproc}", cpu=cpu, memMB=memMB)


def pretrain(
    world: str,
    out: str,
    method: str = "scl",
    nproc: int = 2,
    config: Optional[str] = None,
    max_steps: Optional[int] = None,
    image: str = DEFAULT_IMAGE,
    cpu: int = 2,
    memMB: int = 8192,
) -> specs.AppDef:
    """SCL (or CLIP-style) pre-training of the item encoder; exports item vectors.

    Args:
        world: dataset directory (public Parquet format)
        out: run directory; a restarted job resumes from its checkpoint
        method: scl, clip or random
        nproc: processes (DDP ranks) on the node
        config: YAML/TOML file of SclConfig values
        max_steps: stop after this many optimizer steps
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--method", method, "--world", world, "--out", out, "--quiet"]
    if config:
        args += ["--config", config]
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    return _stage("pretrain", args, nproc, image, cpu, memMB)
