"""GPU evidence in one prepared run (issue #20): six steps in order, each time-boxed, each writing its
result as soon as it has one, then the issue's targets checked. First run on an H100 on 2026-12-05
(benchmarks/results/h100-2026-12-05/, docs/gpu-evidence.md), which led to the order below.

    1 tests   the gpu-marked tests of the grouped-MoE kernels: DeepSeek-V3's expert shape first (offsets
              past 2^31 elements), the grid last                       -> OUT/tests-<device>.json
    2 tune    bounded tuning (tune.py --max-seconds) of the Qwen1.5-MoE and Qwen3-30B-A3B shapes
                                                                       -> OUT/configs/E=..,N=..,device_name=...json
    3 kernel  benchmarks/kernel_moe.py: five layer shapes, tokens 1..8192, bf16, against torch's grouped_mm,
              with the device's copy bandwidth and dense bf16 GEMM rate -> OUT/kernel-<device>.json (+ .png)
    4 kernel-peers  the same on the Qwen1.5-MoE shape against every peer   -> OUT/peers/kernel-<device>.json
    5 aot     benchmarks/aot_check.py: the TensorRT plugins' PTX launched through cuda-python
                                                                       -> OUT/aot-<device>.json
    6 e2e     benchmarks/e2e_moe.py: Qwen3-30B-A3B-shaped layers with the GroupedMoE op, base top-k vs a
              75 % plan, prefill and decode                             -> OUT/e2e-<device>.json
    then      OUT/evidence-<device>.json: each step's command, status, seconds and log (OUT/logs/); the
              targets (decode >= 80 % of copy bandwidth, prefill >= 60 % of the GEMM rate, geomean >= 1.1x
              the best peer, the plan >= 1.25x the base at prefill), met or missed by how much;
              OUT/evidence-bundle.tar.gz: all of OUT, rewritten after every step (the device tool
              returns eight files at most, and not the tuned tables, whose names hold '=' and ',').

`--steps` runs the named steps only, in the order given, among them tuning of the three shapes the
default run leaves untuned (`tune-olmoe-1b-7b`, `tune-mixtral-8x7b`, `tune-deepseek-v3`, 35 s each):
a later, shorter GPU window can take what an earlier one missed.

Each step is its own process (a kernel fault in one cannot take the next down), interrupted at its
time box (SIGINT, so that pytest prints its failures; SIGKILL 15 s later); the boxes add up to
STEPS_SECONDS (under nine minutes). Later steps read the tables step 2 wrote
(MOE_COMPILE_CONFIG_DIR=OUT/configs, seeded with the committed tables).

The device run is one call of the device tool, from the repository root (H100/H200 with torch
2.11 + CUDA 13, Triton 3.6, numpy and cuda-python already installed, no network):

    carry:     [".gpu-wheels"]
    timeout_s: 600
    command:   python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl;
               export PYTHONPATH=/tmp/site:$PWD; python benchmarks/gpu_evidence.py --out $OUT

(one line, joined with spaces; `python -m pip`: the machine's `pip` belongs to another Python).
`.gpu-wheels/` is made beforehand on a machine with network (git-ignored; 31 MB; the machine
keeps its own torch):

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu-wheels -r benchmarks/gpu_requirements.txt

Afterwards, on this machine: unpack OUT/evidence-bundle.tar.gz into a dated folder under
benchmarks/results/, copy its configs/*.json into moe_compile/plugins/grouped_moe/configs/, and run
`python benchmarks/gpu_evidence.py --render FOLDER` to draw the PNGs the GPU machine could not
(no matplotlib there).

`--dry-run` runs the same steps, same scripts, on CPU at tiny shapes (Triton's interpreter), as
CI does (tests/benchmarks/test_gpu_evidence.py), so the script is known to work before GPU time
is spent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PACKAGE_CONFIGS = ROOT / "moe_compile" / "plugins" / "grouped_moe" / "configs"
TUNED_SHAPES = {"qwen1.5-moe-a2.7b": (60, 2048, 1408, 4), "qwen3-30b-a3b": (128, 2048, 768, 8)}  # E, H, I, k
TUNE_TOKENS = ("1", "16", "128", "1024", "4096")
TARGETS = {"decode_hbm_fraction": 0.8, "prefill_flops_fraction": 0.6, "geomean_speedup_vs_best_peer": 1.1,
           "plan_speedup_moe_prefill": 1.25}
_TEST_LINE = re.compile(r"^(\S+::\S+(?:\[.*?\])?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


@dataclass(frozen=True)
class Step:
    name: str
    seconds: int  # its time box on the GPU (the dry run's is DRY_RUN_SECONDS)
    argv: tuple[str, ...]  # after `python`; "{out}" is the output folder
    dry_argv: tuple[str, ...]
    interpreter: bool = True  # TRITON_INTERPRET=1 in the dry run (aot_check compiles: it must be off)


def _tune_step(name: str, shape: tuple[int, int, int, int], seconds: int) -> Step:
    experts, hidden, inter, top_k = shape
    common = ("-m", "moe_compile.plugins.grouped_moe.tune", "--experts", str(experts), "--top-k", str(top_k),
              "--quick", "--out-dir", "{out}/configs")
    return Step(f"tune-{name}", seconds,
                (*common, "--hidden", str(hidden), "--inter", str(inter), "--tokens", *TUNE_TOKENS,
                 "--max-seconds", str(seconds - 10)),
                (*common, "--hidden", "32", "--inter", "16", "--tokens", "1", "5", "--max-seconds", "0", "--dry-run"))


TESTS = "tests/plugins/test_grouped_moe_triton.py"
# In this order: the H100 run of 2026-12-05 reached a quarter of the grid in the time box, so the
# cases that only run here come first (pytest runs node ids in the order given).
GPU_TESTS = tuple(f"{TESTS}::{name}" for name in (
    "test_deepseek_v3_expert_shape_on_gpu", "test_sigmoid_routing_on_gpu", "test_group_limited_on_gpu",
    "test_op_under_torch_compile_and_cuda_graph", "test_launcher_replays_from_a_cuda_graph_with_new_routing",
    "test_every_variant_at_decode_and_prefill_on_gpu", "test_full_grid_on_gpu"))
KERNEL_PEERS = ("liger_kernel_fused_moe", "moe_ops_grouped_gemm", "flashinfer_segment_gemm")
STEPS = (
    Step("tests", 140, ("-m", "pytest", "-v", "-rfE", "--tb=short", "-p", "no:cacheprovider", "-m", "gpu", *GPU_TESTS),
         ("-m", "pytest", "-v", "-p", "no:cacheprovider", TESTS, "-k", "past_two_to_the_31 or deepseek_v3")),
    *(_tune_step(name, shape, 35) for name, shape in TUNED_SHAPES.items()),
    # Every shape against torch's grouped_mm first; the other peers on one shape after (their own
    # autotuning took the whole time box at the second shape in the H100 run of 2026-12-05).
    # The eager reference is no peer (it only checks the others): not timed.
    Step("kernel", 100, ("benchmarks/kernel_moe.py", "--peers", "torch_grouped_mm", "--out", "{out}"),
         ("benchmarks/kernel_moe.py", "--dry-run", "--shapes", "mixtral-8x7b", "--tokens", "1", "5", "--out", "{out}")),
    Step("kernel-peers", 50, ("benchmarks/kernel_moe.py", "--shapes", "qwen1.5-moe-a2.7b", "--no-lexi", "--peers",
                              "torch_grouped_mm", *KERNEL_PEERS, "--out", "{out}/peers"),
         ("benchmarks/kernel_moe.py", "--dry-run", "--shapes", "qwen1.5-moe-a2.7b", "--tokens", "1", "--no-lexi",
          "--out", "{out}/peers")),
    Step("aot", 55, ("benchmarks/aot_check.py", "--out", "{out}"),
         ("benchmarks/aot_check.py", "--dry-run", "--layers", "small-fp32", "--out", "{out}"), interpreter=False),
    Step("e2e", 85, ("benchmarks/e2e_moe.py", "--out", "{out}"),
         ("benchmarks/e2e_moe.py", "--dry-run", "--out", "{out}")),
)
STEPS_SECONDS = sum(step.seconds for step in STEPS)
# Run only when named (--steps): tables for the shapes the default run leaves on the default config.
UNTUNED_SHAPES = {"olmoe-1b-7b": (64, 2048, 1024, 8), "mixtral-8x7b": (8, 4096, 14336, 2),
                  "deepseek-v3": (256, 7168, 2048, 8)}  # E, H, I, k
OPTIONAL_STEPS = tuple(_tune_step(name, shape, 35) for name, shape in UNTUNED_SHAPES.items())
ALL_STEPS = {step.name: step for step in (*STEPS, *OPTIONAL_STEPS)}
INTERRUPT_GRACE_S = 15
BUNDLE = "evidence-bundle.tar.gz"
DRY_RUN_SECONDS = 900  # a shared CI machine: generous, the dry run takes 1.5 CPU-minutes


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def step_env(out: Path, dry_run: bool, interpreter: bool) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               MOE_COMPILE_CONFIG_DIR=str(out / "configs"), PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    if dry_run and interpreter:
        env["TRITON_INTERPRET"] = "1"
    return env


def run_step(name: str, argv: list[str], seconds: float, log: Path, env: dict[str, str]) -> dict:
    """Run `python argv` from the repository root, output to `log`; at `seconds` its process group
    gets SIGINT (pytest then prints its failures) and, INTERRUPT_GRACE_S later, SIGKILL:
    {"command", "status": passed|failed|timed_out, "returncode", "seconds"}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=max(seconds, 1))
            status = "passed" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            returncode, status = process.wait(), "timed_out"
    return {"step": name, "command": "python " + " ".join(argv), "status": status, "returncode": returncode,
            "seconds": round(time.monotonic() - started, 1), "time_box_s": seconds, "log": str(log),
            "log_tail": log.read_text(errors="replace").splitlines()[-15:]}


def bundle(out: Path) -> Path:
    """Everything under `out` in one archive beside it: the device tool returns at most eight
    files, two folders deep, named in letters, digits, '.', '_' and '-' (no tuned table's name)."""
    path, staging = out / BUNDLE, out / f".{BUNDLE}"  # renamed when whole: a run killed mid-write keeps the last
    with tarfile.open(staging, "w:gz") as archive:
        for member in sorted(out.rglob("*")):
            if member.is_file() and member.name != BUNDLE and not member.name.startswith("."):
                archive.add(member, arcname=str(member.relative_to(out)))
    os.replace(staging, path)
    return path


def test_results(log: Path) -> dict:
    """Counts and failures from pytest -v's per-test lines (complete or cut short)."""
    outcomes = {}
    for line in log.read_text(errors="replace").splitlines():
        match = _TEST_LINE.match(line)
        if match:
            outcomes[match.group(1)] = match.group(2)
    counts = {kind.lower(): sum(1 for o in outcomes.values() if o == kind) for kind in ("PASSED", "FAILED", "SKIPPED",
                                                                                        "ERROR")}
    return counts | {"failures": sorted(t for t, o in outcomes.items() if o in ("FAILED", "ERROR"))}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def target(value: float | None, goal: float, what: str) -> dict:
    """One target: met, or missed by how much (in the target's units and as a share of it)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"what": what, "value": None, "target": goal, "met": None, "missed_by": None,
                "note": "not measured"}
    met = value >= goal
    return {"what": what, "value": value, "target": goal, "met": met,
            "missed_by": None if met else goal - value, "missed_by_fraction": None if met else (goal - value) / goal}


def check_targets(kernel: dict | None, e2e: dict | None) -> dict[str, dict]:
    summary = (kernel or {}).get("summary") or {}
    prefill = ((e2e or {}).get("summary") or {}).get("prefill") or {}
    return {
        "decode_hbm_fraction": target(summary.get("min_decode_hbm_fraction"), TARGETS["decode_hbm_fraction"],
                                      "decode (tokens <= 64): lowest share of measured copy bandwidth over the "
                                      "distinct experts' bytes, over every shape"),
        "prefill_flops_fraction": target(summary.get("min_prefill_flops_fraction"), TARGETS["prefill_flops_fraction"],
                                         "prefill (tokens >= 4096): lowest share of the measured dense bf16 GEMM "
                                         "rate, over every shape"),
        "geomean_speedup_vs_best_peer": target(summary.get("geomean_speedup_vs_best_peer"),
                                               TARGETS["geomean_speedup_vs_best_peer"],
                                               "geometric mean over the rows of best peer time / our time"),
        "plan_speedup_moe_prefill": target(prefill.get("plan_speedup_moe"), TARGETS["plan_speedup_moe_prefill"],
                                           "e2e prefill: MoE-layer throughput of the 75 % plan over the base top-k"),
    }


def device_name(dry_run: bool) -> str:
    if dry_run:
        return "dry-run"
    import torch

    if not torch.cuda.is_available():
        print("gpu_evidence: error: no CUDA GPU here (or --dry-run)", file=sys.stderr)
        sys.exit(2)
    return torch.cuda.get_device_name()


def run(out: Path, dry_run: bool, command: str, steps: tuple[Step, ...] = STEPS) -> dict:
    device = device_name(dry_run)
    tag = slug(device)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for table in PACKAGE_CONFIGS.glob("*.json"):  # the committed tables, which the tuned ones join
        shutil.copy2(table, out / "configs" / table.name)
    from moe_compile.versions import package_versions

    versions = package_versions("torch", "triton", "cuda-python", "cuda-bindings", "transformers", "liger-kernel",
                                "moe-ops", "pytest")
    report = {"device": device, "versions": versions,
              "command": command, "steps": [], "targets": {}}
    path = out / f"evidence-{tag}.json"
    deadline = time.monotonic() + (DRY_RUN_SECONDS if dry_run else sum(step.seconds for step in steps))
    for step in steps:
        argv = [arg.format(out=out) for arg in (step.dry_argv if dry_run else step.argv)]
        seconds = min(step.seconds, deadline - time.monotonic()) if not dry_run else deadline - time.monotonic()
        print(f"gpu_evidence: {step.name} (up to {seconds:.0f} s): python {' '.join(argv)}", file=sys.stderr)
        result = run_step(step.name, argv, seconds, out / "logs" / f"{step.name}.log",
                          step_env(out, dry_run, step.interpreter))
        if step.name == "tests":
            tests = test_results(Path(result["log"])) | {"device": device, "command": result["command"],
                                                           "status": result["status"]}
            (out / f"tests-{tag}.json").write_text(json.dumps(tests, indent=2) + "\n")
            result["tests"] = {k: v for k, v in tests.items() if k != "failures"}
        report["steps"].append(result)
        print(f"gpu_evidence: {step.name}: {result['status']} in {result['seconds']} s", file=sys.stderr)
        report["targets"] = check_targets(_read(out / f"kernel-{tag}.json"), _read(out / f"e2e-{tag}.json"))
        path.write_text(json.dumps(report, indent=2) + "\n")
        bundle(out)
    return report


def render(folder: Path) -> list[Path]:
    """Draw the PNG of every kernel-*.json under `folder` (for results measured without matplotlib)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kernel_moe

    drawn = []
    for path in sorted(folder.rglob("kernel-*.json")):
        kernel_moe.plot(json.loads(path.read_text()), path.with_suffix(".png"))
        drawn.append(path.with_suffix(".png"))
    return drawn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for every result, configs/ and logs/")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on CPU at tiny shapes")
    parser.add_argument("--render", type=Path, metavar="FOLDER", help="only draw the PNGs of FOLDER's kernel-*.json")
    parser.add_argument("--steps", nargs="+", choices=list(ALL_STEPS), default=[step.name for step in STEPS],
                        metavar="STEP", help="these steps, in this order (default: the six; also: "
                        + ", ".join(step.name for step in OPTIONAL_STEPS) + ")")
    return parser.parse_args(argv)


def main(argv=None) -> dict | list:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    command = "python benchmarks/gpu_evidence.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run(args.out.resolve(), args.dry_run, command, tuple(ALL_STEPS[name] for name in args.steps))
    print(json.dumps({"steps": {s["step"]: s["status"] for s in report["steps"]}, "targets": report["targets"]},
                     indent=2))
    return report


if __name__ == "__main__":
    main()
