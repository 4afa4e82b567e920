"""3D DARTS search with a FLOPs filter in front; writes a genotype YAML that conf/model/*.yaml
can name (the pipeline: src/nas/pipeline.py).

    python search.py target_tflops=4 data.dir=DIR hydra.run.dir=OUT
    python search.py target_tflops=16 data.dir=DIR resume=OUT/search_checkpoint.pt
    python search.py verify=OUT/genotype.yaml data.dir=DIR

A relative `resume=` or `verify=` path (like every path here) resolves against the directory
the command is run from. Bad input (no data, an unreachable target, a missing or mismatching
checkpoint, a device that is not there, data other than the genotype's) ends in one line on
stderr naming the culprit and exit code 2.
"""

from __future__ import annotations

import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.errors import UserError
from src.nas.pipeline import run_search, run_verify


def run(cfg: DictConfig, command: str | None = None) -> dict:
    """verify= set: check the genotype against data.dir; else filter -> search -> re-fit ->
    genotype.yaml. Returns the genotype's path and the records."""
    if cfg.verify:
        return run_verify(cfg)
    return run_search(cfg, command)


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> None:
    # the genotype records the command that made it, so it can be rerun as it was
    command = shlex.join(["python", "search.py", *HydraConfig.get().overrides.task])
    try:
        result = run(cfg, command)
    except UserError as err:  # bad input: one line, no traceback
        print(f"search.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    if cfg.verify:
        print(f"verified: {result['genotype_path']} was searched on the data in "
              f"{result['data_dir']} (content sha256 {result['identity']['content_sha256']})")
        return
    print(f"genotype: {result['genotype_path']}")


if __name__ == "__main__":
    main()
