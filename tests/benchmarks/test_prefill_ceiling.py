"""benchmarks/prefill_ceiling.py: the products it says our export runs, and its kernel floor."""

import math

import pytest
from benchmark_scripts import benchmark_module


def test_the_exports_products_are_the_models_arithmetic():
    """Counted per product, the export's prefill does the arithmetic counted from the config
    (less the router's and the shared-expert gate's products and the attention, which it leaves out)."""
    with benchmark_module("prefill_ceiling") as ceiling:
        for tokens in (64, 512):
            flops = ceiling.prefill_flops(ceiling.CONFIG, tokens)
            counted = sum(count * 2 * m * k * n for (m, k, n), count in ceiling.export_products(ceiling.CONFIG, tokens).items())
            expected = sum(flops.values()) - flops["router and shared-expert gate"] - flops["attention (causal)"]
            assert counted == pytest.approx(expected, rel=1e-12)
            assert set(ceiling.export_products(ceiling.CONFIG, tokens)) <= set(ceiling.product_shapes(ceiling.CONFIG, tokens))


def test_kernel_floor_is_the_products_at_their_rates_and_the_attentions():
    with benchmark_module("prefill_ceiling") as ceiling:
        config = ceiling.CONFIG
        products = ceiling.export_products(config, 512)
        rates = {f"onnxruntime {m}x{k}x{n}": 100.0 for m, k, n in products}
        rates[f"onnxruntime {512}x{512}x{2048}"] = 50.0  # the lm_head at half the rate: twice its time
        seconds = sum(count * 2 * m * k * n for (m, k, n), count in products.items()) / 100e9 + 2 * 512 * 512 * 2048 / 100e9
        floor = ceiling.kernel_floor_ms(config, 512, rates, attention_ms=2.0)
        assert floor == pytest.approx(seconds * 1e3 + config["num_hidden_layers"] * 2.0)


def test_prompt_attention_is_timed_on_a_valid_node():
    """A small prompt through the GroupQueryAttention the floor times: ONNX Runtime accepts the
    node and a time comes back."""
    with benchmark_module("prefill_ceiling") as ceiling:
        config = {**ceiling.CONFIG, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
        milliseconds = ceiling.prompt_attention_ms(config, 16)
    assert math.isfinite(milliseconds) and milliseconds > 0
