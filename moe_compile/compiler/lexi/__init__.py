"""LExI (arXiv 2509.02753): a static top-k per MoE layer, chosen without data.

    stage 1  profile.py  Δ_j(k) = ||Y_k - Y_base||_F of layer j alone on Gaussian inputs
    stage 2  search.py   per-layer k minimising Σ_j Δ_j(k_j) under a budget (DP or GA),
             cost.py     with the budget counted in active experts or in predicted time
             plan.py     the plan file: written, read back, checked against the model
             plots.py    the sensitivity heatmap and the chosen k per layer (PNG)
"""
