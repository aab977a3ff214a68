"""One Lightning DDP run on the CPU, as a user launches it: ``python lightning_ddp.py OUT MAX_STEPS [CKPT_NAME]``.

Lightning's ``ddp`` strategy starts the other rank by running this script again (``LOCAL_RANK=1``); the
two ranks train the tests' ``TinyModule`` (``lightning_module.py``) over gloo, with checkpoints through
``CkptStoreCheckpointIO`` into ``OUT/model_dir`` (every 2 steps, and ``last.ckpt``), resuming from
``CKPT_NAME`` when given. ``torch.save`` raises in both ranks (nothing may be pickled). Each rank then
writes ``OUT/rank<r>-<MAX_STEPS>.json``: the step it started from and its final weights, for the test to
compare with the checkpoints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from ckptstore_torch.lightning import CkptStoreCheckpointIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' own module
from lightning_module import TinyModule  # noqa: E402


def main(out: Path, max_steps: int, resume: str | None) -> None:
    def no_torch_save(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.save was called: the checkpoint would be pickled")

    torch.save = no_torch_save  # type: ignore[assignment]
    module = TinyModule()
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=out / "ckpts", every_n_train_steps=2, save_top_k=-1,
                                               save_last=True)
    trainer = pl.Trainer(
        max_steps=max_steps, strategy="ddp", accelerator="cpu", devices=2, num_nodes=1,
        plugins=[CkptStoreCheckpointIO(out / "model_dir")], callbacks=[checkpoints], default_root_dir=out,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, ckpt_path=str(out / "ckpts" / resume) if resume else None)
    weights = {name: p.detach().tolist() for name, p in module.state_dict().items()}
    report = {"rank": trainer.global_rank, "world_size": trainer.world_size, "started_at": module.started_at,
              "global_step": trainer.global_step, "weights": weights}
    (out / f"rank{trainer.global_rank}-{max_steps}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
