"""LatestCheckpoint: the resume point of a job (latest.ckpt, linked as last.ckpt), a Lightning
ModelCheckpoint that also makes a resume finish an epoch a stop cut short.

When trainer.max_time (Lightning's Timer) or max_steps stops a job mid-epoch, Lightning still
runs that epoch's end hooks and counts the epoch as processed before the checkpoint is written.
Resumed from such a file, Lightning takes the cut epoch for a finished one and starts the next:
the rest of the cut epoch is never trained, so a job resumed after its time budget ran out ends
one epoch short of max_epochs (issue 19's 42-epoch run lost one that way). Loading the
checkpoint, this callback turns the cut epoch back into an unfinished one, so Lightning resumes
inside it, and has the training sampler skip the samples the cut part already trained (the
epoch's order comes from (seed, epoch), so it is the same order again).
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


def reopen_cut_epoch(checkpoint: dict) -> int:
    """Marks an epoch that a stop cut short as not yet processed in a checkpoint's fit-loop state
    (in place) and returns how many of its batches were trained; 0, and the checkpoint left as
    it is, when it was written at the end of a whole epoch or inside an epoch before the end
    hooks ran (every_n_train_steps)."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = fit_loop.get("epoch_progress")
    batches = fit_loop.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return 0
    trained = batches["current"]["completed"]
    cut = (not batches.get("is_last_batch", True) and trained > 0
           and epochs["current"]["processed"] == epochs["current"]["completed"] + 1)
    if not cut:
        return 0
    for progress in (epochs["current"], epochs["total"]):
        progress["processed"] -= 1
    return trained


class LatestCheckpoint(ModelCheckpoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches_to_skip = 0

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Callbacks see the checkpoint before Lightning restores its loops from it.
        self._batches_to_skip = reopen_cut_epoch(checkpoint)
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_train_start(self, trainer, pl_module) -> None:
        # Resumed inside an epoch, Lightning calls no on_train_epoch_start: the loader is set up
        # here and iterated only after this hook.
        super().on_train_start(trainer, pl_module)
        skip, self._batches_to_skip = self._batches_to_skip, 0
        if not skip:
            return
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if not hasattr(sampler, "skip_next") or not getattr(loader, "batch_size", None):
            log.warning("resuming inside epoch %d after %d batches: this loader's sampler cannot "
                        "skip them, so the epoch's first samples train again", trainer.current_epoch,
                        skip)
            return
        sampler.skip_next(skip * loader.batch_size)
        log.info("resuming inside epoch %d, cut short after %d batches: training its remaining "
                 "batches, on the samples those %d did not train (Lightning's warning that the "
                 "loader is not resumable does not apply)", trainer.current_epoch, skip, skip)
