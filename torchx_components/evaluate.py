"""TorchX component of the batch ranking evaluation: ``mmctr evaluate`` under torchrun.

Every rank rebuilds and shards each run and scores its share of the day's
impressions; rank 0 writes the report. Run locally, with the venv's
``bin`` on ``PATH``::

    torchx run -s local_cwd torchx_components/evaluate.py:evaluate \\
        --world runs/demo/world --models runs/demo/ctr-id_only,runs/demo/ctr-simtier_make --nproc 2

Example::

    >>> app = evaluate(world="w", models=["r/a", "r/b"], day=14, baseline="a")
    >>> cmd = app.roles[0].args[-1]
    >>> "--nproc_per_node 2" in cmd, cmd.split(" -m ")[1]
    (True, 'recsys.cli evaluate --world w --models r/a r/b --quiet --day 14 --baseline a')
"""

# No `from __future__ import annotations`: TorchX reads the real annotation
# objects to parse component arguments.
from typing import List, Optional

from torchx import specs

from torchx_components.pipeline import CPU, DEFAULT_IMAGE, MEM_MB, NNODES, NPROC, _stage


def evaluate(
    world: str,
    models: List[str],
    day: Optional[int] = None,
    baseline: Optional[str] = None,
    out: Optional[str] = None,
    bootstrap: Optional[int] = None,
    store: Optional[str] = None,
    nproc: int = NPROC,
    nnodes: int = NNODES,
    image: str = DEFAULT_IMAGE,
    cpu: int = CPU,
    memMB: int = MEM_MB,
) -> specs.AppDef:
    """Scores a day with finished CTR runs and writes report.json and report.html (GAUC lifts with bootstrap CIs).

    Args:
        world: dataset directory the runs were trained on
        models: finished mmctr train run folders, comma-separated
        day: day to score (default: the manifest's test_day, its last day unless declared)
        baseline: baseline run name or variant (default: the first id_only run, else the first)
        out: report folder (default: eval-day-D next to the first run folder)
        bootstrap: bootstrap resamples of users (default: mmctr evaluate's)
        store: vector store adding vectors of items the runs' tables lack (new items)
        nproc: processes (ranks) on the node
        nnodes: nodes (replicas) on a cluster scheduler; ranks = nnodes x nproc
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--world", world, "--models", *models, "--quiet"]
    optional = {"--day": day, "--baseline": baseline, "--out": out, "--bootstrap": bootstrap, "--store": store}
    args += [x for flag, value in optional.items() if value is not None for x in (flag, str(value))]
    return _stage("evaluate", args, nproc, image, cpu, memMB, nnodes)
