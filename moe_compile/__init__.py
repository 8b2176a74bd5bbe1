"""moe-compile: compile Mixture-of-Experts language models for deployment.

The pipeline (see docs/architecture.md): read a model into the MoE IR (compiler/),
choose a static top-k per MoE layer (compiler/lexi), rewrite each MoE block to call
the GroupedMoE op (compiler/rewrite.py, plugins/grouped_moe), export to ONNX (export/),
build a TensorRT engine (plugins/tensorrt), validate and benchmark (validate/) and write a
Triton Inference Server repository (deploy/).
"""

__version__ = "0.1.0"
