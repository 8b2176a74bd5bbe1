"""How hot self-kl samples its sequences, chosen on a development text (docs/lexi.md).

For each sampling temperature, self-kl's plan (profile, DP, `plan`'s refine and guard, as `plan`
runs them) at each of quality.py's budgets, scored by perplexity on the demo's held-out windows
and on DEV: Python's own documentation topics (pydoc_data.topics, shipped with the interpreter),
a text of another style that no training or calibration uses and that quality.py does not score
on, so that the temperature is not chosen on the text the result is reported on. Beside them,
uniform top-k and quality.py's 8 random plans with the same Σk (same seed, so the same plans).

    python benchmarks/sampling_temperature.py --model demo
    python benchmarks/sampling_temperature.py --model demo-deepseek

Prints and writes benchmarks/results/sampling_temperature-MODEL.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality
from demo_corpus import load_corpus

from moe_compile.compiler.lexi.cost import ActiveExperts
from moe_compile.compiler.lexi.kl_profile import OutputObjective
from moe_compile.compiler.lexi.options import DEFAULT_REFINE
from moe_compile.compiler.lexi.plan import Budget, make_plan
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.compiler.lexi.verify import uniform_plan
from moe_compile.validate.bench import cpu_model

TEMPERATURES = (1.0, 1.5, 2.0)


def dev_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--windows", type=int, default=64, help="evenly spaced windows of each text scored")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=quality.RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    text = dev_text()
    with tempfile.TemporaryDirectory() as scratch:
        dev = Path(scratch) / "pydoc_topics.txt"
        dev.write_text(text, encoding="utf-8")
        study = quality.Study(load_corpus(Path.home() / ".cache" / "moe-compile" / "corpus"), args.model,
                              args.windows, dev)
    rng = np.random.default_rng(quality.SEED)
    points = []
    for budget in quality.BUDGETS:  # the random plans drawn in quality.py's order
        sum_k = int(budget * sum(study.base) + 0.5)
        points.append({"budget": budget, "sum_k": sum_k, "plans": {"uniform": uniform_plan(study.base, sum_k)},
                       "random_plans": [quality.random_plan(study.base, sum_k, rng) for _ in range(quality.RANDOM_PLANS)]})
    for temperature in TEMPERATURES:
        options = ProfileOptions(estimator="self-kl", temperature=temperature)
        objective = OutputObjective(study.moe_model, options)
        profile = profile_model(study.moe_model, options, show_progress=False, objective=objective)
        scorer = quality.memoised(objective.plan_kl)
        for point in points:
            doc = make_plan(study.moe_model, profile, Budget(fraction=point["budget"]), ActiveExperts(),
                            objective=scorer, refine_passes=DEFAULT_REFINE)
            point["plans"][f"self-kl T={temperature}"] = [layer["top_k"] for layer in doc["layers"]]
    for point in points:
        for text_name, label in (("held_out", "held_out"), ("unseen", "dev")):
            scores = {name: study.perplexity(ks, text=text_name) for name, ks in point["plans"].items()}
            scores["random"] = [study.perplexity(ks, text=text_name) for ks in point["random_plans"]]
            point[label] = scores
        point["done_when"] = {name: quality.verdict(point, name, texts=("held_out", "dev"))
                              for name in point["plans"] if name != "uniform"}
    doc = {"model": args.model,
           "dev_text": {"source": f"Python {sys.version.split()[0]} pydoc_data.topics, topics joined in name order",
                        "sha256": hashlib.sha256(text.encode()).hexdigest(), "windows": int(study.texts["unseen"].shape[0])},
           "held_out_windows": int(study.held_out.shape[0]),
           "points": points,
           "cells_passed": {f"self-kl T={t}": sum(cell["no_worse_than_uniform"] and 4 * cell["random_plans_beaten"] >= 3 * quality.RANDOM_PLANS
                                                  for point in points for cell in point["done_when"][f"self-kl T={t}"].values())
                            for t in TEMPERATURES},
           "machine": {"cpu": cpu_model(), "threads": args.threads},
           "command": "python benchmarks/sampling_temperature.py " + " ".join(sys.argv[1:]),
           "wall_seconds": round(time.time() - started, 1)}
    out = args.results / f"sampling_temperature-{args.model}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"cells_passed": doc["cells_passed"], "of": 2 * len(points)}))


if __name__ == "__main__":
    main()
