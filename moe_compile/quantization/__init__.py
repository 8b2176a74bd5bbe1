"""Weight-only block quantization: the one definition that the ONNX export (QMoE, MatMulNBits)
and the PyTorch reference it is checked against (`dequantized`) both use."""

from .blocks import BITS, QuantizedBlocks, dequantized, pack, quantize_blocks

__all__ = ["BITS", "QuantizedBlocks", "dequantized", "pack", "quantize_blocks"]
