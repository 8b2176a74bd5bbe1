"""The GroupedMoE node as six TensorRT plugin nodes, each one ahead-of-time compiled Triton kernel.

`expand.expand_grouped_moe` rewrites the ONNX graph, `plugin.register_plugins` registers the
six plugins with TensorRT's Python plugin API (`tensorrt.plugin`, imported only there), and
`stages` describes the six in plain Python for both. docs/tensorrt.md explains the design.

What TensorRT this package needs is said here once, for the builder, the runner and the plugins.
"""

MIN_TENSORRT = (10, 8)  # tensorrt.plugin with ahead-of-time (aot_impl) plugins
MIN_TENSORRT_TEXT = ".".join(map(str, MIN_TENSORRT))
INSTALL = (f"pip install 'moe-compile[tensorrt]' (tensorrt>={MIN_TENSORRT_TEXT} from NVIDIA's index, "
           "--extra-index-url https://pypi.nvidia.com) on a machine with an NVIDIA GPU")


def tensorrt_version(trt) -> tuple[int, ...]:
    """(major, minor) of an imported tensorrt module."""
    return tuple(int(part) for part in trt.__version__.split(".")[:2])
