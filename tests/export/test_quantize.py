"""export --quantize: the block math, the scheme's refusals, and quantized files against their
dequantized PyTorch reference (QMoE routed in the node and outside it, MatMulNBits)."""

import numpy as np
import onnx
import pytest
import torch

from moe_compile.cli import main
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput
from moe_compile.export.exporter import export_onnx
from moe_compile.export.length_dispatch import prompt_graph
from moe_compile.quantization import dequantized, pack, quantize_blocks
from moe_compile.quantization.scheme import QuantScheme, quant_scheme
from moe_compile.validate.compare import compare_outputs
from moe_compile.validate.parity import reference_model, validate_onnx
from moe_compile.validate.runners import OnnxRuntimeRunner, TorchRunner
from moe_compile.validate.tolerances import TOLERANCES


@pytest.mark.parametrize("bits", [4, 8])
def test_blocks_round_trip(bits):
    weight = torch.randn(3, 6, 64, generator=torch.Generator().manual_seed(bits))
    weight[0, 0, :16] = 0.0  # an all-zero block
    blocks = quantize_blocks(weight, bits, 16)
    q = blocks.stored.int() - (1 << (bits - 1))
    assert q.min() >= -(1 << (bits - 1)) and q.max() <= (1 << (bits - 1)) - 1
    assert int(q.abs().amax()) == (1 << (bits - 1)) - 1  # each block's largest value maps to qmax
    values = dequantized(weight, bits, 16)
    assert torch.equal(values.view(3, 6, 4, 16), q.float().view(3, 6, 4, 16) * blocks.scales[..., None])
    assert (values - weight).abs().max() <= blocks.scales.max() / 2 + 1e-6
    packed = pack(blocks)  # [3, 6, 4, 16 * bits / 8]
    assert packed.shape == (3, 6, 4, 16 * bits // 8)
    if bits == 4:
        unpacked = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(3, 6, 64)
    else:
        unpacked = packed.reshape(3, 6, 64)
    assert np.array_equal(unpacked, blocks.stored.numpy())


@pytest.mark.parametrize("transposed", [False, True])
def test_block_quantization_slices_are_the_whole_weights(transposed):
    """export/quantized_weights.py: a weight's packed values and scales, computed slice by slice
    (an expert at a time, or MatMul's [K, N] weight by its columns), are the whole weight's; the
    scales asked for without the values are computed again, the same."""
    import onnx_ir

    from moe_compile.export.quantized_weights import BlockQuantization, QuantizedTensor

    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 24, generator=generator) if transposed else torch.randn(3, 24, 64, generator=generator)
    rows = weight.T if transposed else weight  # [..., N, K]
    expected = quantize_blocks(rows, 4, 16)
    for first in ("packed", "scales"):
        quantization = BlockQuantization(onnx_ir.tensor(weight.numpy()), QuantScheme("int4", 16), transposed)
        tensors = {part: QuantizedTensor(quantization, part, part) for part in ("packed", "scales")}
        order = [first, "scales" if first == "packed" else "packed"]
        values = {part: tensors[part].values().numpy() for part in order}
        assert np.array_equal(values["packed"], pack(expected)) and values["packed"].dtype == np.uint8
        assert np.array_equal(values["scales"], expected.scales.numpy()) and values["scales"].dtype == np.float32
        assert tensors["packed"].nbytes == values["packed"].nbytes


@pytest.mark.parametrize("name, block, message", [
    ("int3", None, "--quantize int3: not a supported target (int8, int4)"),
    ("int4", 64, "--block-size 64 does not divide the hidden size 32"),
    ("int4", 24, "--block-size 24: must be one of 16, 32, 64, 128"),
    (None, 16, "--block-size needs --quantize int8|int4"),
])
def test_scheme_refusals(name, block, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        quant_scheme(name, block, 32, [16])


def test_default_block_divides_every_size():
    assert quant_scheme("int4", None, 512, [256]) == QuantScheme("int4", 32)
    assert quant_scheme("int8", None, 128, [48]) == QuantScheme("int8", 16)  # the demo's experts


@pytest.mark.parametrize("argv_tail, message", [
    (["--quantize", "int2"], "not a supported target"),
    (["--quantize", "int4", "--block-size", "64"], "does not divide the hidden size 32"),
    (["--quantize", "int4", "--target", "onnx"], "only for --target onnxruntime"),
])
def test_cli_refuses_bad_quantize(argv_tail, message, tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(tiny_model_dirs["qwen2_moe"]), "--out", str(out), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model_type, scheme, routing", [
    ("qwen2_moe", "int4", "standard ops"),  # top-k not renormalised: routed outside QMoE
    ("qwen3_moe", "int4", "in the op"),  # renormalised: QMoE routes
    pytest.param("qwen2_moe", "int8", "standard ops", marks=pytest.mark.slow),
])
def test_quantized_export_matches_dequantized_reference(model_type, scheme, routing, tiny_model_dirs, tmp_path):
    ir = load_moe_model(tiny_model_dirs[model_type])
    path = tmp_path / "model.onnx"
    result = export_onnx(ir, path, target="onnxruntime", quantize=QuantScheme(scheme, 16))
    assert {layer["lowered_to"] for layer in result.report.layers} == {"com.microsoft.QMoE"}
    assert {layer["routing"] for layer in result.report.layers} == {routing}
    graph = onnx.load(path)
    (dispatch,) = graph.graph.node[-1:]  # split by input length (export/length_dispatch.py)
    assert dispatch.op_type == "If"
    levels = {branch.name: {(node.op_type, next((a.i for a in node.attribute if a.name == "accuracy_level"), 0))
                            for node in branch.g.node if node.op_type in ("MatMulNBits", "QMoE")}
              for branch in dispatch.attribute}
    assert levels == {"then_branch": {("MatMulNBits", 4), ("QMoE", 4)},  # decode steps on int8 activations,
                      "else_branch": {("MatMulNBits", 0), ("QMoE", 0)}}  # prompts on fp32
    prompt_graph(graph)
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("QMoE") == len(ir.layers) and "MoE" not in ops
    assert result.quantized["dense"] == ops.count("MatMulNBits") > 0
    assert result.quantized["decode_compute"] == "int8"
    packed = {init.name for init in graph.graph.initializer if init.data_type == onnx.TensorProto.UINT8}
    assert len(packed) == 2 * len(ir.layers) + ops.count("MatMulNBits")  # held once, read by both branches
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata["moe_compile.quantize"] == f"{scheme}/16"
    report = validate_onnx(ir, path)
    # Some steps run on int8 activations (tolerances.INT8_ACTIVATIONS): every step of an int8 file,
    # the decode steps of both. This random model's near-tied greedy tokens may then part ways,
    # which validate reports (docs/export.md); the trained demo's do not (tests/export/test_demo_quantized.py).
    assert all(d.passed for d in report.prefill + report.decode), report.to_json()
    assert report.decode_tolerance == ({"rtol": 5e-2, "atol": 1.0} if scheme == "int4" else None)
    if scheme == "int8":
        assert report.tolerance == {"rtol": 5e-2, "atol": 1.0}
        return
    assert report.tolerance == {"rtol": 1e-4, "atol": 1e-4}  # prompts: both sides dequantize to fp32
    # Not vacuous: the file is far from the unquantized model; the dequantized reference is what
    # brings it within fp32's tolerance.
    top_k = {spec.index: spec.base_top_k for spec in ir.layers}
    fp32 = reference_model(ir, {k: v for k, v in metadata.items() if k != "moe_compile.quantize"}, top_k)
    feed = _prefill_feed(fp32)
    got = OnnxRuntimeRunner(path).infer(feed)
    tolerance = TOLERANCES["fp32"]
    assert not all(d.passed for d in compare_outputs(TorchRunner(fp32).infer(feed), got, tolerance, ["logits"]))


def _prefill_feed(model):
    from moe_compile.export.decoder import decoder_inputs, empty_past

    prompt = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    return decoder_inputs(model, prompt, empty_past(model, 2, model.dtype)).as_feed(model.config.num_hidden_layers)
