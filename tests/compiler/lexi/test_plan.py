"""LExI plans: the file, the budget, reuse of a profile, latency objectives, applying a plan."""

import json

import pytest

from moe_compile.cli import main
from moe_compile.compiler.lexi.cost import ActiveExperts, MeasuredLatency, RooflineLatency
from moe_compile.compiler.lexi.plan import Budget, apply_plan, load_plan, make_plan
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.compiler.lexi.search import LayerChoices, solve_dp, total_delta
from moe_compile.compiler.loader import load_causal_lm, load_moe_model
from moe_compile.compiler.rewrite import StaticTopKMoE
from moe_compile.errors import InvalidInput

FAST = ["--batch", "1", "--seq-len", "16", "--draws", "2"]
PNG = b"\x89PNG\r\n\x1a\n"


def plan_cli(capsys, *argv):
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_plan_file_keys_budget_and_byte_identical_reruns(tmp_path, capsys):
    out = tmp_path / "plan.json"
    plan_cli(capsys, "demo", "--budget", "0.75", *FAST, "--out", str(out))
    first = out.read_bytes()
    plan_cli(capsys, "demo", "--budget", "0.75", *FAST, "--out", str(out))
    assert out.read_bytes() == first
    plan = json.loads(first)
    assert plan["schema"] == "moe-compile/plan/v1"
    assert plan["model"] == load_moe_model("demo").fingerprint
    assert plan["budget"]["fraction"] == 0.75 and plan["budget"]["limit"] == 24  # round(0.75 * 8 * 4)
    assert plan["command"].startswith("moe-compile plan demo --budget 0.75")
    layers = plan["layers"]
    assert [layer["index"] for layer in layers] == list(range(8))
    assert all(set(layer) >= {"index", "base_top_k", "top_k", "sensitivity"} for layer in layers)
    assert sum(layer["top_k"] for layer in layers) == plan["predicted"]["sum_k"] <= 24
    assert all(1 <= layer["top_k"] <= layer["base_top_k"] == 4 for layer in layers)
    assert (tmp_path / "plan.png").read_bytes().startswith(PNG)


def test_sum_k_budget_and_ga_solver(tmp_path, capsys):
    dp, ga = tmp_path / "dp.json", tmp_path / "ga.json"
    plan_cli(capsys, "demo", "--sum-k", "20", *FAST, "--out", str(dp))
    plan_cli(capsys, "demo", "--sum-k", "20", "--solver", "ga", *FAST, "--out", str(ga))
    dp_plan, ga_plan = json.loads(dp.read_text()), json.loads(ga.read_text())
    assert dp_plan["predicted"]["sum_k"] == 20  # the DP spends the whole budget: Δ falls with k
    assert ga_plan["predicted"]["sum_k"] <= 20 and ga_plan["solver"] == {"name": "ga", "seed": 0}
    assert ga_plan["predicted"]["delta"] >= dp_plan["predicted"]["delta"] - 1e-9


def test_plan_reuses_a_profile(tmp_path, capsys):
    profile, reused, fresh = tmp_path / "profile.json", tmp_path / "reused.json", tmp_path / "fresh.json"
    assert main(["profile", "demo", *FAST, "--out", str(profile)]) == 0
    assert (tmp_path / "profile.png").read_bytes().startswith(PNG)
    plan_cli(capsys, "demo", "--budget", "0.5", "--profile", str(profile), *FAST, "--out", str(reused))
    plan_cli(capsys, "demo", "--budget", "0.5", *FAST, "--out", str(fresh))
    assert json.loads(reused.read_text())["layers"] == json.loads(fresh.read_text())["layers"]


def test_plan_json_on_stdout(tmp_path, capsys):
    out = plan_cli(capsys, "demo", "--budget", "0.5", *FAST, "--json", "--out", str(tmp_path / "p.json"))
    printed = json.loads(out)
    assert printed.pop("peak_memory")["peak_rss_bytes"] > 0  # what the command used, not part of the plan
    assert printed == json.loads((tmp_path / "p.json").read_text())


@pytest.fixture(scope="module")
def tiny_profile(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    return ir, profile_model(ir, ProfileOptions(batch=1, seq_len=16, draws=2), show_progress=False)


def test_latency_objective_meets_its_target(tiny_profile):
    ir, profile = tiny_profile
    roofline = RooflineLatency(device="h100", tokens=1)  # decode: time follows the experts read
    plan = make_plan(ir, profile, Budget(fraction=0.7), roofline)
    assert plan["budget"]["objective"] == "roofline" and plan["predicted"]["unit"] == "ms"
    assert plan["predicted"]["cost"] <= plan["budget"]["limit"] == pytest.approx(0.7 * plan["predicted"]["base_cost"])
    measured = MeasuredLatency(tokens=8, repeats=5)  # timings are cached, so the plan sees these numbers
    per_layer = [(measured.costs(spec, list(range(1, spec.base_top_k + 1))), spec.base_top_k) for spec in ir.layers]
    # between the cheapest plan and the base; at these tiny shapes timer noise can make k=1 the slower
    target = sum(min(costs.values()) + costs[base] for costs, base in per_layer) / 2
    plan = make_plan(ir, profile, Budget(target_ms=target), measured)
    assert plan["budget"]["objective"] == "measured" and plan["predicted"]["cost"] <= target


class KOneSlowest(ActiveExperts):
    """Costs as a noisy timer on a tiny layer can give them: k=1 dearer than k=2."""

    name, unit = "noisy", "ms"

    def costs(self, spec, ks):
        return {k: 3.0 if k == 1 else float(k) - 1 for k in ks}


def test_least_cost_is_each_layers_cheapest_k_when_costs_do_not_grow_with_k(tiny_profile):
    ir, profile = tiny_profile
    layers = len(ir.layers)  # per layer: k=1 costs 3, k=2 costs 1; so the floor is `layers`, not 3 * layers
    plan = make_plan(ir, profile, Budget(target_ms=1.5 * layers), KOneSlowest())
    assert plan["budget"]["min_cost"] == layers and plan["predicted"]["cost"] <= 1.5 * layers
    with pytest.raises(InvalidInput, match=r"each layer at its cheapest k \[2, 2"):
        make_plan(ir, profile, Budget(target_ms=layers - 0.5), KOneSlowest())


def test_wide_prefill_reads_every_expert_whatever_k(tiny_profile):
    """At 64 tokens over 8 experts every expert is read at any k: a smaller k saves little."""
    ir, profile = tiny_profile
    with pytest.raises(InvalidInput, match="is below the least possible cost"):
        make_plan(ir, profile, Budget(fraction=0.7), RooflineLatency(device="h100", tokens=64))


def test_roofline_cost_grows_with_k(tiny_profile):
    ir, _ = tiny_profile
    for tokens in (1, 4096):
        costs = RooflineLatency(device="h200", tokens=tokens).costs(ir.layers[0], [1, 2, 3])
        assert costs[1] < costs[2] < costs[3]


def test_plan_objective_is_the_dp_optimum(tiny_profile):
    ir, profile = tiny_profile
    plan = make_plan(ir, profile, Budget(sum_k=4), ActiveExperts())
    choices = [LayerChoices(cost={k: float(k) for k in layer.delta}, delta=layer.delta) for layer in profile.layers]
    assert plan["predicted"]["delta"] == pytest.approx(total_delta(choices, solve_dp(choices, 4)))


def test_apply_plan_rewrites_each_layer_to_its_k(tiny_model_dirs, tiny_profile, tmp_path):
    ir, profile = tiny_profile
    plan = make_plan(ir, profile, Budget(sum_k=4), ActiveExperts())
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    planned = load_plan(path, ir)
    assert sum(planned.values()) == 4
    model = apply_plan(load_causal_lm(ir), ir, path)
    blocks = {spec.index: model.get_submodule(spec.module_path) for spec in ir.layers}
    assert all(isinstance(b, StaticTopKMoE) and b.top_k == planned[i] for i, b in blocks.items())
