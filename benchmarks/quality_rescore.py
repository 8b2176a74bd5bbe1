"""The plans of a committed quality.py run, scored on another text: does what quality.py found on
its unseen text hold on a second text that no training, calibration or choice used?

For each budget of benchmarks/results/quality-<model>.json: the uniform plan, every estimator's
plan as `moe-compile plan` returned it, and the run's random plans with the same Σk, on every
128-token window of TEXT (the files given, joined by blank lines, tokenised by the model's
tokenizer as `moe-compile eval --text` does), with the issue's bar per estimator (no worse than
uniform; random plans beaten, of how many). Nothing is planned again: the plans are the
committed run's. Prints JSON; saves benchmarks/results/quality-<model>-<name>.json.

    python benchmarks/quality_rescore.py --model demo-deepseek --name vim-user-manual \\
        --text /usr/share/vim/vim90/doc/usr_*.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quality import RESULTS, memoised, routed_perplexity, verdict

from moe_compile.compiler.lexi.options import ESTIMATORS
from moe_compile.compiler.loader import load_moe_model
from moe_compile.validate.perplexity import eval_windows


def joined_text(files: list[Path]) -> str:
    return "\n\n".join(path.read_text(encoding="utf-8") for path in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="the model of a committed quality run: 'demo' or 'demo-deepseek'")
    parser.add_argument("--text", type=Path, nargs="+", required=True, help="UTF-8 files, joined in the order given")
    parser.add_argument("--name", required=True, help="what the text is, for the results file's name")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    committed = json.loads((RESULTS / f"quality-{args.model}.json").read_text())
    moe_model = load_moe_model(args.model)
    if moe_model.fingerprint["sha256"] != committed["model"]["sha256"]:
        raise SystemExit(f"{args.model}: not the model of the committed quality run (weights differ)")
    text = joined_text(args.text)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "text.txt"
        path.write_text(text, encoding="utf-8")
        windows = eval_windows(moe_model.path, path)

    def evaluate(ks: list[int]) -> float:
        value = routed_perplexity(moe_model, ks, windows)
        print(f"  k {ks} -> {value:.4f}", flush=True)
        return value

    score = memoised(evaluate)  # a plan shared by estimators, or by uniform and one, is scored once

    base = score([spec.base_top_k for spec in moe_model.layers])
    points = []
    for committed_point in committed["points"]:
        plans = committed_point["plans"]
        returned = {f"{e}:plan": plans[f"{e}:plan"] for e in ESTIMATORS}
        text_scores = {"uniform": score(plans["uniform"]), **{name: score(ks) for name, ks in returned.items()},
                       "random": [score(ks) for ks in plans["random"]]}
        text_scores["random_best"], text_scores["random_median"] = min(text_scores["random"]), float(np.median(text_scores["random"]))
        point = {"budget": committed_point["budget"], "sum_k": committed_point["sum_k"],
                 "plans": {"uniform": plans["uniform"], **returned}, "text": text_scores}
        point["done_when"] = {name: verdict(point, name, texts=("text",))["text"] for name in returned}
        print(json.dumps({"sum_k": point["sum_k"], "done_when": point["done_when"]}), flush=True)
        points.append(point)
    doc = {
        "benchmark": "quality_rescore", "model": committed["model"],
        "plans_from": f"benchmarks/results/quality-{args.model}.json",
        "text": {"name": args.name, "files": [str(path) for path in args.text],
                 "sha256_of_each": [hashlib.sha256(path.read_bytes()).hexdigest() for path in args.text],
                 "sha256_joined": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                 "windows": int(windows.shape[0]), "window": int(windows.shape[1])},
        "base": base, "points": points, "threads": args.threads, "wall_seconds": round(time.time() - started),
        "command": f"python benchmarks/quality_rescore.py --model {args.model} --name {args.name} --text "
                   + " ".join(str(path) for path in args.text),
    }
    out = RESULTS / f"quality-{args.model}-{args.name}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"base": base, "cells": {p["sum_k"]: p["done_when"]["self-kl:plan"] for p in points}}, indent=1))


if __name__ == "__main__":
    main()
