"""Analyses of a pruned cache that no method needs: label-free fidelity against the full
cache, attention statistics by modality (the paper's Figures 1, 6, 7) and peak memory."""
