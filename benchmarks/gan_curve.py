"""The GAN's physics checks along its training: validate the (moving-average) generator every
--every generator steps, so a setting can be judged by its curve, not by one end point.

    python -m benchmarks.gan_curve --data SIMS --steps 1300 --every 100 --out /tmp/gan_curve \\
        --set periodic=false --set one_point_weight=10

Trains as `generate.py method=gan` does (conf/gan/default.yaml, `--set key=value` for gan.*),
on the training side of SIMS's split, without checkpoints; validates on --n-validation
training sub-volumes (src/gan/campaign.py) with conf/gan_validation/default.yaml. Prints one
line per validation (the four check values, the P(k) ratio per bin up to half Nyquist, the
mean count and empty fraction of the generated cubes) and writes each validation's JSON to
--out. No timing is asserted; the per-step time printed is only a guide.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import yaml
from omegaconf import OmegaConf

from src.gan.physics import validate
from src.gan.reference import validation_set
from src.gan.sample import LoadedGenerator
from src.gan.train_gan import (
    build_gan,
    check_train_data,
    describe,
    gan_datamodule,
    resolve_periodic,
)
from src.sim.mesh import cube_root

ROOT = Path(__file__).resolve().parents[1]


class Curve(L.Callback):
    def __init__(self, every: int, simulated, params, thresholds, box: float, out: Path):
        self.every, self.sim, self.params, self.thresholds = every, simulated, params, thresholds
        self.box, self.out, self.t0 = box, out, time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step // 2  # two optimizer steps per batch
        if step == 0 or step % self.every:
            return
        gen = LoadedGenerator(self.out / "unsaved.ckpt", module.generator_ema,
                              dict(module.hparams), "unsaved")
        cubes = gen.generate(self.params, list(range(len(self.params))), 16)
        result = validate(self.sim, cubes, self.params, self.thresholds, self.box)
        checks = {c["name"]: round(float(np.ravel(c["value"])[0]), 3) for c in result["checks"]}
        ratio = np.round(np.ravel(result["pk"]["ratio"]), 2).tolist()
        print(f"step {step} ({time.perf_counter() - self.t0:.0f} s): "
              f"{'PASS' if result['passed'] else 'fail'} {checks} P ratio {ratio} "
              f"mean {cubes.mean():.3f} (sim {self.sim.mean():.3f}) empty "
              f"{(cubes == 0).mean():.3f} (sim {(self.sim == 0).mean():.3f})", flush=True)
        (self.out / f"validation_{step}.json").write_text(json.dumps(result, default=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a generate.py simulation set")
    ap.add_argument("--steps", type=int, default=1000, help="generator steps")
    ap.add_argument("--every", type=int, default=100, help="validate every this many steps")
    ap.add_argument("--n-validation", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/gan_curve"))
    ap.add_argument("--set", action="append", default=[], help="gan.<key>=<yaml value>")
    args = ap.parse_args()
    gcfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/gan/default.yaml"))
    for item in args.set:
        key, value = item.split("=", 1)
        gcfg[key] = yaml.safe_load(value)
    gcfg.update(train_data=str(args.data.absolute()), progress=False,
                n_validation=args.n_validation)
    data_dir, manifest = check_train_data(gcfg)
    gcfg["periodic"] = resolve_periodic(gcfg, manifest)
    thresholds = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/gan_validation/default.yaml"))
    args.out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(gcfg["seed"]))
    dm = gan_datamodule(gcfg, data_dir)
    module = build_gan(gcfg, dm, describe(gcfg, dm))
    simulated, params = validation_set(data_dir, manifest, gcfg)
    box = float(manifest["sim"]["box_size"]) / cube_root(int(manifest["sim"]["n_sub"]))
    trainer = L.Trainer(accelerator=str(gcfg["accelerator"]), max_steps=2 * args.steps,
                        max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[Curve(args.every, simulated, params, thresholds, box, args.out)])
    trainer.fit(module, datamodule=dm)


if __name__ == "__main__":
    main()
