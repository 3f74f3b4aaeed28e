"""The baselines of the paper's Table 1, each a KVPruner on the engine in `csp`."""
