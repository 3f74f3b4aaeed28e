"""Cross-Self Pruning (`cross_self`) and what every method runs on: the pruning engine
(`engine`), the model adapters and stand-in checkpoints (`models`) and the analyses of
pruned caches (`analysis`). The other methods live beside CSP in `baselines/`."""
