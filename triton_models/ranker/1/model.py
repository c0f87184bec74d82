"""Triton python-backend model for CPU hosts: runs this version's model.onnx with onnxruntime.

GPU nodes never load this file: config.pbtxt selects Triton's onnxruntime backend, which reads the same
model.onnx. Version 2 links to this file, so both versions run identical serving code.

The dynamic batcher hands `execute` several requests at once; they are concatenated into one onnxruntime
call (the whole point of batching) and the outputs split back by each request's row count.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUTS = ("cat_ids", "dense")
OUTPUTS = ("pctr", "pcvr")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model_path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        # Triton and the gateway share this host's cores; one intra-op thread per instance avoids
        # oversubscription, and Triton's instance_group is the knob for more parallelism.
        options.intra_op_num_threads = int(os.environ.get("RANKER_ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        config = json.loads(args["model_config"])
        self._output_dtypes = {
            out["name"]: pb_utils.triton_string_to_numpy(out["data_type"]) for out in config["output"]
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        batches = {name: [] for name in INPUTS}  # type: dict[str, list[np.ndarray[Any, Any]]]
        row_counts: list[int] = []
        for request in requests:
            for name in INPUTS:
                batches[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            row_counts.append(batches[INPUTS[0]][-1].shape[0])
        feeds = {name: np.concatenate(parts) for name, parts in batches.items()}
        results = self._session.run(list(OUTPUTS), feeds)
        splits = np.cumsum(row_counts)[:-1]
        per_output = [
            np.split(result.astype(self._output_dtypes[name]), splits)
            for name, result in zip(OUTPUTS, results, strict=True)
        ]
        responses = []
        for i in range(len(requests)):
            tensors = [pb_utils.Tensor(name, per_output[k][i]) for k, name in enumerate(OUTPUTS)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self._session = None
