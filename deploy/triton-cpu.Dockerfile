# Triton for CPU-only hosts (docker-compose.cpu.yml, or the chart with triton.gpu.enabled=false):
# configs/cpu.pbtxt runs each version's model.onnx in the python backend with onnxruntime, which the NGC
# image's python lacks. Same Triton 2.51 as the GPU deployment, plus onnxruntime for the stub.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "onnxruntime>=1.19,<2" "numpy>=1.26,<2.0"
# The image's own unprivileged user (uid 1000).
USER triton-server
