"""3D DARTS search with a FLOPs filter in front; writes a genotype YAML that conf/model/*.yaml
can name (the pipeline: src/nas/pipeline.py).

    python search.py target_tflops=4 data.dir=DIR hydra.run.dir=OUT
    python search.py target_tflops=16 data.dir=DIR resume=OUT/search_checkpoint.pt

A relative `resume=` path (like every path here) resolves against the directory the command is
run from. Bad input (no data, an unreachable target, a missing or mismatching checkpoint, a
device that is not there) ends in one line on stderr naming the culprit and exit code 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from src.errors import UserError
from src.nas.pipeline import run_search


def run(cfg: DictConfig) -> dict:
    """Filter -> search -> re-fit -> genotype.yaml; returns its path and the search records."""
    return run_search(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except UserError as err:  # bad input: one line, no traceback
        print(f"search.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"genotype: {result['genotype_path']}")


if __name__ == "__main__":
    main()
