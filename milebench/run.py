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

import os
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from csp.engine.method import ConfigError
from milebench.data import DataError
from milebench.runner.loop import run
from milebench.score import ScoreError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
EXIT_BAD_INPUT = 2


def one_line(message: str) -> str:
    """A multi-line message on one line: after ':' or '.' a space, otherwise '; '."""
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    out = parts[0] if parts else ""
    for prev, part in zip(parts, parts[1:]):
        out += (" " if prev.endswith((":", ".")) else "; ") + part
    return out


def hydra_message(err: Exception) -> str:
    """Hydra's composition errors, without the config search path it appends."""
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such {group} config; available: {', '.join(err.options)}"
    text = str(err).split("\nConfig search path:")[0]
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        text += f" ({str(cause).strip().splitlines()[0]})"
    return one_line(text)


def fail(message: str) -> NoReturn:
    """Bad configuration or data: one line that says it all, no traceback, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        run_dir = run(cfg, method_name=hc.runtime.choices.get("method"), overrides=list(hc.overrides.task))
    except (ConfigError, DataError, ScoreError) as e:
        # A mistake in the config or the data: its message names the field, file or sample.
        fail(one_line(str(e)))
    print(f"results: {run_dir}")


def cli() -> None:
    """`main` with Hydra's own composition errors (unknown method, bad override) reported as
    one line too. Hydra prints those itself unless HYDRA_FULL_ERROR=1, which makes it raise
    them; a user who sets it gets Hydra's full report, as Hydra documents."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        fail(hydra_message(e))


if __name__ == "__main__":
    cli()
