"""Run MileBench with any model and KV-pruning method.

    python -m milebench.run method=csp budget=0.1 datasets=[WebQA,TQA] limit=20
    bash scripts/eval.sh method=csp                    # the same, after bootstrapping .venv
    NPROC=8 bash scripts/eval.sh method=csp            # 8 processes, one shard of batches each
    python -m milebench.run -m method=h2o,snapkv budget=0.1,0.2   # a Hydra sweep

Predictions go to <output_dir>/<model>/<run_name>/<dataset>/pred.json, scored when each
dataset completes; the resolved config is saved as <output_dir>/<model>/<run_name>/config.yaml.
A rerun of the same command resumes where the last one stopped.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from milebench.runner.loop import run
from milebench.runner.settings import RunConfigError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        run_dir = run(cfg, method_name=hc.runtime.choices.get("method"), overrides=list(hc.overrides.task))
    except RunConfigError as e:
        # A configuration mistake: its message says everything, a traceback would only hide it.
        print(f"configuration error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {run_dir}")


if __name__ == "__main__":
    main()
