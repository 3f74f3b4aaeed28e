"""MileBench: catalog, data loading, prompts and scoring, faithful to the benchmark's own code."""
