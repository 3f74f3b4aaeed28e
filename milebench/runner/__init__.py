"""The pieces of the MileBench runner (`milebench.run`): configuration checks, the durable
prediction store, data-parallel sharding and the per-dataset loop."""
