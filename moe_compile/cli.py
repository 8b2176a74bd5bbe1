"""The `moe-compile` command line (its contract is ../shared/DESIGN.md).

`moe-compile MODEL --out FILE` runs the whole pipeline (the `compile` command); the other
commands run one stage. Every user error ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Callable

from moe_compile import __version__
from moe_compile.errors import InvalidInput, MoeCompileError, NotBuiltYet, one_line

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
_positive_float = _number(float, lambda value: value > 0, "must be positive")
_positive_int = _number(int, lambda value: value >= 1, "must be at least 1")


# --- commands ---------------------------------------------------------------------------------


def _run(target: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports `module:function` from moe_compile.commands when it runs, so
    that `--help` and the commands that do not need torch start fast."""
    def handler(args: argparse.Namespace) -> int:
        module, function = target.split(":")
        return getattr(importlib.import_module(f"moe_compile.commands.{module}"), function)(args)

    return handler


def _not_built(what: str, issue: int) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise NotBuiltYet(f"{args.command}: {what} is not built yet (issue #{issue}); `moe-compile inspect` works now")

    return handler


# --- the parser -------------------------------------------------------------------------------


def _profile_args(parser: argparse.ArgumentParser) -> None:
    from moe_compile.compiler.lexi.options import ProfileOptions

    defaults = ProfileOptions()
    group = parser.add_argument_group("LExI profile (stage 1)")
    group.add_argument("--batch", type=_positive_int, default=defaults.batch, help="B of each draw X [B, L, H]")
    group.add_argument("--seq-len", type=_positive_int, default=defaults.seq_len, help="L of each draw")
    group.add_argument("--draws", type=_positive_int, default=defaults.draws, help="N draws averaged")
    group.add_argument("--seed", type=int, default=defaults.seed, help="seed of the draws (and of the GA)")
    group.add_argument("--scale", type=_positive_float, default=defaults.scale, help="standard deviation of X")
    group.add_argument("--k-min", type=_positive_int, default=defaults.k_min, help="smallest top-k considered")


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help="a local Hugging Face model folder, or 'demo' (the default) for the built-in model")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moe-compile", description=(
        "Compile a Mixture-of-Experts model: a LExI static top-k per MoE layer, ONNX with GroupedMoE "
        "nodes, TensorRT engines, Triton Inference Server repositories. MODEL is a local Hugging Face "
        "folder or 'demo'; `moe-compile MODEL --out FILE` runs the whole pipeline."))
    parser.add_argument("--version", action="version", version=f"moe-compile {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    p = command("compile", "the whole pipeline: plan, rewrite, export, check (default command)",
                _run("export:run_compile"))
    _model_arg(p)
    p.add_argument("--out", required=True, help="model.onnx (export + parity check) or engine.plan (TensorRT)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--plan", help="a plan.json from `moe-compile plan`")
    budget.add_argument("--budget", type=_fraction, help="fraction of the base active experts to keep (LExI)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--target", choices=("onnxruntime", "onnx", "tensorrt"), default="onnxruntime",
                   help="how GroupedMoE nodes are lowered in model.onnx")

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

    p = command("plan", "LExI stage 2: choose a per-layer top-k under a budget", _run("lexi:run_plan"))
    _model_arg(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--budget", type=_fraction,
                        help="fraction of the cost at the base top-k (sum-k: Σk <= round(F * Σ base k))")
    target.add_argument("--sum-k", type=_positive_int, help="total active experts over all MoE layers")
    target.add_argument("--target-ms", type=_positive_float, help="latency objective: time for all MoE layers")
    p.add_argument("--objective", choices=("sum-k", "latency"), default="sum-k")
    p.add_argument("--solver", choices=("dp", "ga"), default="dp", help="exact DP (default) or genetic algorithm")
    p.add_argument("--cost-model", choices=("measured", "roofline-h100", "roofline-h200"), default="measured",
                   help="latency objective: time the op here, or predict it for a GPU")
    p.add_argument("--tokens", type=_positive_int, default=1, help="latency objective: tokens per call")
    p.add_argument("--profile", help="reuse a profile.json from `moe-compile profile`")
    _profile_args(p)
    p.add_argument("--out", required=True, help="plan.json (a plot is written beside it as .png)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")

    p = command("export", "export to ONNX with one GroupedMoE node per MoE layer", _run("export:run_export"))
    _model_arg(p)
    p.add_argument("--plan", help="a plan.json: export at its per-layer top-k")
    p.add_argument("--target", choices=("tensorrt", "onnxruntime", "onnx"), default="onnxruntime",
                   help="tensorrt: plugin nodes; onnxruntime: com.microsoft.MoE; onnx: standard ops only")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true", help="print the export report as JSON")

    p = command("build", "build a TensorRT engine from an exported ONNX model", _not_built("the TensorRT build", 7))
    p.add_argument("onnx")
    p.add_argument("--out", required=True)
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")

    p = command("validate", "numeric parity of an exported model with the PyTorch reference",
                _run("export:run_validate"))
    _model_arg(p)
    p.add_argument("--plan", help="the plan the model was exported with (checked against the file)")
    p.add_argument("--onnx", help="model.onnx from `moe-compile export`")
    p.add_argument("--engine", help="engine.plan (issue #7)")
    p.add_argument("--json", action="store_true")

    p = command("bench", "throughput and latency of every available backend",
                _not_built("throughput and latency of every available backend", 10))
    _model_arg(p)
    p.add_argument("--plan")
    p.add_argument("--onnx")
    p.add_argument("--engine")

    p = command("deploy", "write a Triton Inference Server model repository", _not_built("deployment", 8))
    p.add_argument("artifact", help="engine.plan or model.onnx")
    p.add_argument("--repo", required=True)
    p.add_argument("--name", required=True)

    p = command("eval", "held-out perplexity, optionally under a plan", _run("eval:run_eval"))
    _model_arg(p)
    p.add_argument("--plan", help="a plan.json: score the model at its per-layer top-k")
    p.add_argument("--text", help="UTF-8 text to score (default: the model folder's heldout.txt, else the demo's)")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    try:
        args = parser.parse_args(_with_default_command(argv, commands))
        args.command_line = shlex.join(["moe-compile", *argv])  # recorded in the files a command writes
        return args.handler(args)
    except MoeCompileError as exc:
        print(f"moe-compile: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("moe-compile: interrupted", file=sys.stderr)
        return 130
