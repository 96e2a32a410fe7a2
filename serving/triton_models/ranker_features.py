"""Triton Python-backend model ``<ranker>_features``: the feature step of the TorchScript ranker's ensemble.

Loads the run its version folder's ``ranker.json`` names (written by
``serving.ranker_production``) as ``serving.ranker.Ranker`` loads it, and
turns each request (``user``, ``history``, ``candidates``, context features:
``serving.ranker_export``'s interface, without Triton's batch dimension) into
the TorchScript artefact's inputs (``serving.ranker_script``: the dataset's
joins, the run's ID mapping, the frozen table with the vector store's fresh
items), plus ``version``, this folder's number. The ensemble hands them to
``<ranker>_model``, which runs ``model.pt`` (libtorch in NVIDIA's Triton
container, the Python backend here). A malformed request gets its own
error naming the field; the others are answered. Config parameters:
``max_candidates``, ``torch_threads`` (0 keeps torch's default).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.triton_models.ranker import _pb, load_ranker, parse_request, refusal


class TritonPythonModel:
    """One request at a time (the ensemble has no batch dimension): a request in, the artefact's tensors out."""

    def initialize(self, args: dict[str, str]) -> None:
        from serving import ranker_export as rx
        from serving.ranker_script import ARTIFACT_INPUTS

        # eager: the feature step runs the model's remap and table, not its arithmetic (that is model.pt's)
        config, _, self.ranker = load_ranker(args, engine="eager")
        self.name = f"{config['name']} v{args['model_version']}"
        self.version = np.array([int(args["model_version"])], dtype=np.int64)
        self.outputs = ARTIFACT_INPUTS
        self.version_output = rx.VERSION_OUTPUT

    def execute(self, requests: list[Any]) -> list[Any]:
        from serving.ranker import check_request

        pb = _pb()
        responses = []
        for request in requests:
            try:
                r = parse_request(request, self.ranker.context)
                check_request(r, self.ranker.context, self.ranker.max_candidates)
                tensors = self.ranker.inputs([r])
            except ValueError as e:  # a malformed request or an ID the dataset refuses: this request only
                responses.append(refusal(self.name, str(e)))
                continue
            out = [pb.Tensor(name, t.numpy()) for name, t in zip(self.outputs, tensors)]
            responses.append(pb.InferenceResponse(output_tensors=[*out, pb.Tensor(self.version_output, self.version)]))
        return responses
