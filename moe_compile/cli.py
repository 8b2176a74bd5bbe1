"""The `moe-compile` command line (its contract is ../shared/DESIGN.md).

`moe-compile MODEL --out FILE` runs the whole pipeline (the `compile` command); the other
commands run one stage. Every user error ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib
import math
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from moe_compile import __version__, interrupts, process_memory
from moe_compile.dtypes import PRECISIONS
from moe_compile.errors import InvalidInput, MoeCompileError, one_line

DEFAULT_MODEL = "demo"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as InvalidInput (one line, exit 2)."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1:]  # "moe-compile plan" -> ["plan"]
        raise InvalidInput(f"{command[0] + ': ' if command else ''}{message} (see --help)")


def _number(parse: Callable[[str], float], accept: Callable[[float], bool], requirement: str):
    """An argparse type: `parse` the text, then keep it only if `accept` says so."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole number' if parse is int else 'number'}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} {requirement}")
        return value

    return convert


_fraction = _number(float, lambda value: 0.0 < value <= 1.0, "is outside (0, 1]")
_positive_float = _number(float, lambda value: 0 < value < math.inf, "must be positive and finite")
_positive_int = _number(int, lambda value: value >= 1, "must be at least 1")
_non_negative_int = _number(int, lambda value: value >= 0, "must be 0 or more")
_port = _number(int, lambda value: 1 <= value <= 65535, "is not a TCP port (1 to 65535)")


def _positive_ints(text: str) -> list[int]:
    """`1,8,32` -> [1, 8, 32]: an argparse type for lists of sizes."""
    return [_positive_int(item.strip()) for item in text.split(",")]


# --- commands ---------------------------------------------------------------------------------


def _run(target: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports `module:function` from moe_compile.commands when it runs, so
    that `--help` and the commands that do not need torch start fast."""
    def handler(args: argparse.Namespace) -> int:
        module, function = target.split(":")
        return getattr(importlib.import_module(f"moe_compile.commands.{module}"), function)(args)

    return handler


# --- the parser -------------------------------------------------------------------------------


def _profile_args(parser: argparse.ArgumentParser) -> None:
    from moe_compile.compiler.lexi.options import ESTIMATORS, ProfileOptions

    defaults = ProfileOptions()
    group = parser.add_argument_group("LExI profile (stage 1)")
    group.add_argument("--batch", type=_positive_int, default=defaults.batch, help="B of each draw X [B, L, H]")
    group.add_argument("--seq-len", type=_positive_int, default=defaults.seq_len, help="L of each draw")
    group.add_argument("--draws", type=_positive_int, default=defaults.draws, help="N draws averaged")
    group.add_argument("--seed", type=int, default=defaults.seed, help="seed of the draws (and of the GA)")
    group.add_argument("--scale", type=_positive_float, default=defaults.scale, help="standard deviation of X")
    group.add_argument("--k-min", type=_positive_int, default=defaults.k_min, help="smallest top-k considered")
    group.add_argument("--estimator", choices=ESTIMATORS,
                       help="sensitivity of a layer to k: lexi (Gaussian Δ, the paper), model-aware (input through "
                            "the block's norm, Δ relative), self-kl (KL on sequences the model samples), "
                            "calibration (KL on --calibration text). Default: calibration with --calibration, else "
                            "self-kl up to 2 GiB of weights and lexi above (measured: docs/lexi.md)")
    group.add_argument("--calibration", help="plain UTF-8 text for --estimator calibration (the model's tokenizer.json)")
    group.add_argument("--samples", type=_positive_int, default=defaults.samples,
                       help="self-kl/calibration: sequences (windows of --seq-len tokens) scored")
    group.add_argument("--temperature", type=_positive_float, default=defaults.temperature,
                       help="self-kl: the temperature the model samples its sequences at (docs/lexi.md)")


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help="a local Hugging Face model folder, or a built-in model: 'demo' (the default, "
                             "Qwen2-MoE) or 'demo-deepseek' (DeepSeek-V3)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moe-compile", description=(
        "Compile a Mixture-of-Experts model: a LExI static top-k per MoE layer, ONNX with GroupedMoE "
        "nodes, TensorRT engines, Triton Inference Server repositories. MODEL is a local Hugging Face "
        "folder, 'demo' or 'demo-deepseek'; `moe-compile MODEL --out FILE` runs the whole pipeline."))
    parser.add_argument("--version", action="version", version=f"moe-compile {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    p = command("compile", "the whole pipeline: plan, rewrite, export, (build,) check (default command)",
                _run("export:run_compile"))
    _model_arg(p)
    p.add_argument("--out", required=True, help="model.onnx (export + parity check) or engine.plan (TensorRT)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--plan", help="a plan.json from `moe-compile plan`")
    budget.add_argument("--budget", type=_fraction, help="fraction of the base active experts to keep (LExI)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--target", choices=("onnxruntime", "onnx", "tensorrt"),
                   help="how GroupedMoE nodes are lowered (default: onnxruntime for model.onnx; an engine "
                        "is always built from the tensorrt target)")

    p = command("inspect", "list the MoE layers of a model", _run("inspect:run_inspect"))
    _model_arg(p)
    p.add_argument("--plan", help="also show the top-k a plan.json gives each layer")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")

    p = command("profile", "LExI stage 1: data-free sensitivity of every MoE layer to its top-k",
                _run("lexi:run_profile"))
    _model_arg(p)
    _profile_args(p)
    p.add_argument("--out", required=True, help="profile.json (a heatmap is written beside it as .png)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON instead of a table")

    from moe_compile.compiler.lexi.options import DEFAULT_REFINE

    p = command("plan", "LExI stage 2: choose a per-layer top-k under a budget", _run("lexi:run_plan"))
    _model_arg(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--budget", type=_fraction,
                        help="fraction of the cost at the base top-k (sum-k: Σk <= round(F * Σ base k))")
    target.add_argument("--sum-k", type=_positive_int, help="total active experts over all MoE layers")
    target.add_argument("--target-ms", type=_positive_float, help="latency objective: time for all MoE layers")
    p.add_argument("--objective", choices=("sum-k", "latency", "reads"), default="sum-k",
                   help="what the budget counts: active experts, time, or distinct expert reads per decode "
                        "step of --samples sequences measured on the calibration tokens (with --budget)")
    p.add_argument("--solver", choices=("dp", "ga"), default="dp", help="exact DP (default) or genetic algorithm")
    p.add_argument("--cost-model", choices=("measured", "roofline-h100", "roofline-h200"), default="measured",
                   help="latency objective: time the op here, or predict it for a GPU")
    p.add_argument("--tokens", type=_positive_int, default=1, help="latency objective: tokens per call")
    p.add_argument("--profile", help="reuse a profile.json from `moe-compile profile`")
    p.add_argument("--refine", type=_non_negative_int, default=DEFAULT_REFINE,
                   help="rounds of local search around the searched plan, scored on the real KL (0: none)")
    p.add_argument("--keep-searched", action="store_true",
                   help="return the searched plan even when the uniform plan of the same Σk scores better")
    verify = p.add_mutually_exclusive_group()
    verify.add_argument("--no-verify", action="store_true",
                        help="skip refine and guard (they run the whole model on calibration tokens)")
    verify.add_argument("--verify", action="store_true",
                        help="refine and guard a model of over 2 GiB of weights too, where they are off by default "
                             "(every plan scored reads the whole checkpoint)")
    _profile_args(p)
    p.add_argument("--out", required=True, help="plan.json (a plot is written beside it as .png)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")

    p = command("export", "export to ONNX with one GroupedMoE node per MoE layer", _run("export:run_export"))
    _model_arg(p)
    p.add_argument("--plan", help="a plan.json: export at its per-layer top-k")
    p.add_argument("--target", choices=("tensorrt", "onnxruntime", "onnx"), default="onnxruntime",
                   help="tensorrt: plugin nodes; onnxruntime: com.microsoft.MoE; onnx: standard ops only")
    p.add_argument("--dtype", choices=PRECISIONS, default="fp32")
    p.add_argument("--quantize", metavar="int8|int4",
                   help="weight-only quantized experts (com.microsoft.QMoE) and dense projections (MatMulNBits); "
                        "onnxruntime target, fp32")
    p.add_argument("--block-size", type=_positive_int,
                   help="quantization block along the input features: 16, 32, 64 or 128 (default: 32, or the "
                        "largest smaller one dividing the hidden and expert sizes)")
    p.add_argument("--moe-prompts", choices=("sorted", "node"), default="sorted",
                   help="onnxruntime target, fp32 experts: inputs of 4 tokens or more run as per-expert Gemms "
                        "(sorted; faster, ONNX Runtime then holds the experts twice) or in com.microsoft.MoE (node)")
    p.add_argument("--ort-fusions", action="store_true",
                   help="onnxruntime target, fp32: attention and norms as ONNX Runtime's fused ops (MultiHeadAttention, "
                        "SkipSimplifiedLayerNormalization); measured slower than the default at every "
                        "workload (prompts 0.75-1.00x, decode 0.46-0.90x; docs/export.md)")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true", help="print the export report as JSON")

    p = command("build", "build a TensorRT engine from an exported ONNX model (GroupedMoE nodes run as our plugins)",
                _run("build:run_build"))
    p.add_argument("onnx", help="model.onnx from `moe-compile export --target tensorrt` (or any ONNX model)")
    p.add_argument("--out", required=True, help="engine.plan, written only after a successful build")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="the precision you expect: the engine keeps the ONNX file's types, and a mismatch is refused "
                        "(default: the file's)")
    p.add_argument("--max-batch", type=_positive_int, help="largest batch the engine takes (default: 8)")
    p.add_argument("--max-seq", type=_positive_int,
                   help="longest context, cached + new tokens, the engine takes (default: 1024)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file: read if it exists, written after the build")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")

    p = command("validate", "numeric parity of an exported model with the PyTorch reference",
                _run("export:run_validate"))
    _model_arg(p)
    p.add_argument("--plan", help="the plan the model was exported with (checked against the file)")
    p.add_argument("--onnx", help="model.onnx from `moe-compile export`")
    p.add_argument("--engine", help="engine.plan from `moe-compile build` (needs TensorRT and a GPU)")
    p.add_argument("--json", action="store_true")

    p = command("bench", "throughput and latency of every available backend", _run("bench:run_bench"))
    _model_arg(p)
    p.add_argument("--plan", help="also run at this plan's per-layer top-k, side by side with the base top-k")
    p.add_argument("--onnx", help="an onnxruntime-target model.onnx to run (otherwise exported to a temporary folder)")
    p.add_argument("--engine", help="engine.plan from `moe-compile build`, run by the tensorrt backend")
    p.add_argument("--backends", type=lambda text: [b.strip() for b in text.split(",")],
                   help="comma-separated subset: transformers, pytorch, onnxruntime-cpu, pytorch-cuda, "
                        "onnxruntime-cuda, tensorrt (default: every one available here)")
    p.add_argument("--batch", type=_positive_ints, default=[1, 8], help="batch sizes, e.g. 1,8,32")
    p.add_argument("--prompt", type=_positive_ints, default=[128], help="prompt lengths, e.g. 128,512")
    p.add_argument("--new-tokens", type=_positive_int, default=32, help="decode steps timed per run")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed runs per measurement (after a warm-up)")
    p.add_argument("--rounds", type=_positive_int, default=1,
                   help="time every backend this many times, the order reversed every other round; each speed-up "
                        "is the median of the rounds' own ratios (for machines whose speed moves between minutes)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch and ONNX Runtime (default: torch's)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--quantize", type=lambda text: [name.strip() for name in text.split(",")], default=[],
                   help="also run each top-k as a weight-quantized file (export --quantize, default block size) "
                        "in ONNX Runtime on the CPU, e.g. int4 or int8,int4")
    p.add_argument("--plot", help="also save the throughput as a PNG plot here")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of tables")

    p = command("deploy", "write a Triton Inference Server model repository: the decoder NAME and "
                "NAME_generate (greedy decoding)", _run("deploy:run_deploy"))
    p.add_argument("artifact", help="engine.plan (TensorRT) or model.onnx (export --target onnxruntime)")
    p.add_argument("--repo", required=True, help="the model repository folder (other models in it stay)")
    p.add_argument("--name", required=True, help="the decoder's model name (letters, digits, _ - .)")
    p.add_argument("--backend", choices=("tensorrt", "onnxruntime", "python"),
                   help="default: tensorrt for .plan, python (ONNX Runtime in the python backend) for .onnx")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="max_batch_size of the decoder")
    p.add_argument("--instances", type=_positive_int, default=1, help="model instances per device")
    p.add_argument("--max-new-tokens", type=_positive_int,
                   help="server-side cap on the tokens one NAME_generate request may ask for, at most the model's "
                        "context (default: 1024, or the context when shorter)")
    p.add_argument("--force", action="store_true", help="replace NAME and NAME_generate if the repository has them")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")

    p = command("serve", "serve a model repository with Triton Inference Server (nvidia-pytriton's tritonserver) "
                "on 127.0.0.1 until Ctrl-C", _run("deploy:run_serve"))
    p.add_argument("--repo", required=True, help="a model repository from `moe-compile deploy`")
    p.add_argument("--http-port", type=_port, default=8000)
    p.add_argument("--grpc-port", type=_port, default=8001)
    p.add_argument("--startup-timeout", type=_positive_float, default=120.0, help="seconds to wait for ready")
    p.add_argument("--json", action="store_true", help="print the addresses as one JSON line")

    p = command("eval", "held-out perplexity, optionally under a plan or of an ONNX export", _run("eval:run_eval"))
    _model_arg(p)
    p.add_argument("--plan", help="a plan.json: score the model at its per-layer top-k")
    p.add_argument("--onnx", help="an ONNX export of MODEL (target onnxruntime or onnx, fp32 or fp16): score it in "
                   "ONNX Runtime")
    p.add_argument("--text", help="UTF-8 text to score (default: the model folder's heldout.txt, else the demo's)")
    p.add_argument("--stepwise", action="store_true",
                   help="with --onnx: feed each window one token at a time through the KV cache, as generation "
                        "runs (a quantized file's decode branch), instead of as one prompt")
    p.add_argument("--json", action="store_true")
    return parser


def _with_default_command(argv: list[str], commands: set[str]) -> list[str]:
    """`moe-compile MODEL --out X` and `moe-compile --out X` mean `moe-compile compile ...`."""
    if argv and (argv[0] in commands or argv[0] in ("-h", "--help", "--version")):
        return argv
    return ["compile", *argv]


def _quiet_libraries() -> None:
    """Our messages are the interface: keep transformers' warnings off stderr unless asked for,
    and its progress bars too when stderr is not a terminal (logs, CI, pipes)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()


@contextlib.contextmanager
def _signals_interrupt():
    """SIGINT and SIGTERM both stop the run as Ctrl-C does (interrupts.py)."""
    interrupts.reset()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, interrupts.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def os_error_line(exc: OSError) -> str:
    """`[Errno 28] No space left on device: '/x/.model.onnx.staging.ab12/model.onnx'` -> one line
    naming a path the user knows: the staged files are gone by now (atomic.py), so the nearest
    folder that still exists."""
    if not exc.filename:
        return one_line(exc)
    path = Path(exc.filename)
    if exc.errno != errno.ENOENT:
        while not path.exists() and path.parent != path:
            path = path.parent
    return f"{exc.strerror or one_line(exc)}: {path}"


def _interrupted() -> int:
    name = interrupts.received() or "SIGINT"
    print(f"moe-compile: interrupted ({name}); outputs left as they were", file=sys.stderr)
    return 128 + getattr(signal, name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    process_memory.start_sampling()
    _quiet_libraries()
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    try:
        with _signals_interrupt():
            args = parser.parse_args(_with_default_command(argv, commands))
            args.command_line = shlex.join(["moe-compile", *argv])  # recorded in the files a command writes
            return args.handler(args)
    except KeyboardInterrupt:
        return _interrupted()
    except MoeCompileError as exc:
        if interrupts.received():
            return _interrupted()
        print(f"moe-compile: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the machine refused a read or write: a full disk, a read-only mount, permissions
        if interrupts.received():
            return _interrupted()
        print(f"moe-compile: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except Exception:
        if interrupts.received():
            return _interrupted()
        raise


def run() -> int:
    """The `moe-compile` program: `main`, then exit without the interpreter's last garbage
    collection. That collection walks every object still alive, and after an export those are the
    trace's (573,050 after a two-layer Qwen3-30B-A3B-shaped export): 1.4-1.5 s of a 17-18 s run,
    0.2 s with them frozen out of it (by hand, 2026-12-05). The process ends here, so the memory
    goes back to the system anyway. Not in `main`, which tests call many times in one process."""
    code = main()
    sys.stdout.flush()
    gc.freeze()
    return code
