"""Which layers a text needs: one layer's loss of k measured on each text, and how far texts agree.

For every MoE layer j and k below its base top-k, the perplexity increase (relative to the base
model) from lowering only layer j to k, on: the model's held-out windows, quality.py's unseen
text (onnxruntime's ThirdPartyNotices.txt) and a second unseen text (--text, joined as
quality_rescore.py joins it). Beside them, the self-kl profile the committed quality run planned
with (KL on sequences the model sampled itself). Then, per pair of sources, Spearman of the
single-layer losses over every (layer, k) and over the layers at each k; and for each budget of
the committed run, the self-kl plan and the uniform plan scored additively on each text (sum of
their layers' single-layer increases), beside their measured perplexities where the committed
runs hold them.

A plan built on one source can only be as good on a text as that text's ranking of the layers
agrees with the source's; this measures the agreement.

    python benchmarks/layer_cost_by_text.py --model demo-deepseek --text /usr/share/vim/vim90/doc/usr_*.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from quality import RESULTS, UNSEEN, routed_perplexity, spearman
from quality_rescore import joined_text

from moe_compile.atomic import write_text_atomic
from moe_compile.compiler.loader import load_moe_model
from moe_compile.validate.perplexity import eval_windows

SAMPLED = "sampled (self-kl profile, KL)"


def single_layer_increases(moe_model, windows: torch.Tensor, name: str) -> dict[tuple[int, int], float]:
    """{(position, k): perplexity / base perplexity - 1} on `windows`, one layer lowered at a time."""
    base = [spec.base_top_k for spec in moe_model.layers]
    reference = routed_perplexity(moe_model, base, windows)
    rows = {}
    for position, top in enumerate(base):
        for k in range(1, top):
            ks = list(base)
            ks[position] = k
            rows[(position, k)] = routed_perplexity(moe_model, ks, windows) / reference - 1
            print(f"  {name}: layer {position} at k {k}: {100 * rows[(position, k)]:+.3f} %", flush=True)
    return rows


def agreement(a: dict, b: dict) -> dict:
    keys = sorted(a)
    ks = sorted({k for _, k in keys})
    return {"all_pairs": spearman([a[key] for key in keys], [b[key] for key in keys]),
            "across_layers_at_k": {str(k): spearman([a[key] for key in keys if key[1] == k],
                                                     [b[key] for key in keys if key[1] == k]) for k in ks}}


def additive(rows: dict, ks: list[int], base: list[int]) -> float:
    return sum(rows[(position, k)] for position, k in enumerate(ks) if k < base[position])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="the model of a committed quality run: 'demo' or 'demo-deepseek'")
    parser.add_argument("--text", type=Path, nargs="+", required=True, help="the second unseen text: UTF-8 files, joined")
    parser.add_argument("--name", default="vim-user-manual", help="what --text is")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    committed = json.loads((RESULTS / f"quality-{args.model}.json").read_text())
    rescored_path = RESULTS / f"quality-{args.model}-{args.name}.json"
    rescored = json.loads(rescored_path.read_text()) if rescored_path.exists() else None
    moe_model = load_moe_model(args.model)
    if moe_model.fingerprint["sha256"] != committed["model"]["sha256"]:
        raise SystemExit(f"{args.model}: not the model of the committed quality run (weights differ)")
    base = [spec.base_top_k for spec in moe_model.layers]
    second = joined_text(args.text)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "text.txt"
        path.write_text(second, encoding="utf-8")
        texts = {"held_out": eval_windows(moe_model.path), "unseen": eval_windows(moe_model.path, UNSEEN),
                 args.name: eval_windows(moe_model.path, path)}
    sources = {name: single_layer_increases(moe_model, windows, name) for name, windows in texts.items()}
    profile = committed["profiles"]["self-kl"]["sensitivity"]
    sources[SAMPLED] = {(position, k): profile[position][str(k)] for position, k in sources["held_out"]}

    names = list(sources)
    budgets = []
    for index, point in enumerate(committed["points"]):
        plans = {"self-kl plan": point["plans"]["self-kl:plan"], "uniform": point["plans"]["uniform"]}
        measured = {"held_out": point["held_out"], "unseen": point["unseen"]}
        if rescored is not None:
            measured[args.name] = rescored["points"][index]["text"]
        budgets.append({"sum_k": point["sum_k"], "plans": plans,
                        "additive_increase": {text: {plan: additive(sources[text], ks, base) for plan, ks in plans.items()}
                                              for text in texts},
                        "measured_perplexity": {text: {"self-kl plan": values.get("self-kl:plan"),
                                                       "uniform": values.get("uniform")}
                                                for text, values in measured.items()}})
    result = {
        "benchmark": "layer_cost_by_text", "model": committed["model"],
        "texts": {"held_out": {"windows": int(texts["held_out"].shape[0])},
                  "unseen": {"source": str(UNSEEN), "windows": int(texts["unseen"].shape[0]),
                             "sha256": hashlib.sha256(UNSEEN.read_bytes()).hexdigest()},
                  args.name: {"files": [str(path) for path in args.text], "windows": int(texts[args.name].shape[0]),
                              "sha256": hashlib.sha256(second.encode("utf-8")).hexdigest()}},
        "single_layer_increase": {name: [{"position": p, "k": k, "value": v} for (p, k), v in rows.items()]
                                  for name, rows in sources.items()},
        "agreement": {f"{a} vs {b}": agreement(sources[a], sources[b])
                      for i, a in enumerate(names) for b in names[i + 1:]},
        "budgets": budgets,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "wall_seconds": round(time.time() - started, 1),
        "command": f"python benchmarks/layer_cost_by_text.py --model {args.model} --name {args.name} --text ...",
    }
    text = json.dumps(result, indent=1)
    print(text)
    write_text_atomic(RESULTS / f"layer_cost_by_text-{args.model}.json", text + "\n")


if __name__ == "__main__":
    main()
