"""Cross-Self Pruning and the KV-pruning engine that every method runs on."""
