"""The GroupedMoE node as six TensorRT plugin nodes, each one ahead-of-time compiled Triton kernel.

`expand.expand_grouped_moe` rewrites the ONNX graph, `plugin.register_plugins` registers the
six plugins with TensorRT's Python plugin API (`tensorrt.plugin`, imported only there), and
`stages` describes the six in plain Python for both. docs/tensorrt.md explains the design.
"""
