"""Trainer(plugins=[CkptStoreCheckpointIO(model_dir)]): checkpoints in ckptstore, resumed, deleted; and
under DDP on two real ranks (``trials/lightning_ddp.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ModelDir

from ckptstore import CheckpointStore

pl = pytest.importorskip("pytorch_lightning")

from ckptstore_torch.lightning import CkptStoreCheckpointIO  # noqa: E402
from lightning_module import TinyModule  # noqa: E402


def trainer(tmp_path: Any, io: Any, max_steps: int) -> Any:
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_top_k=-1,
                                               save_last=True)
    return pl.Trainer(
        max_steps=max_steps, plugins=[io], callbacks=[checkpoints], default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    )


def test_trainer_saves_resumes_and_prunes_through_ckptstore(tmp_path, model_dir: ModelDir, monkeypatch) -> None:
    def no_torch_save(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.save was called: the checkpoint would be pickled")

    monkeypatch.setattr(torch, "save", no_torch_save)
    io = CkptStoreCheckpointIO(model_dir.url, storage_options=model_dir.storage_options)
    module = TinyModule()
    trainer(tmp_path, io, 4).fit(module)
    assert not list((tmp_path / "ckpts").glob("*.ckpt"))  # nothing went to Lightning's own files

    name = "epoch=0-step=4.ckpt"
    store = CheckpointStore(f"{model_dir.url}/{name}", storage_options=model_dir.storage_options)
    info = store.latest()
    assert info.step == 4 and info.metadata["lightning_path"].endswith(name)
    loaded = io.load_checkpoint(tmp_path / "anywhere" / name)
    assert loaded["global_step"] == 4 and loaded["hyper_parameters"] == {"hidden": 8}
    assert torch.equal(loaded["state_dict"]["net.0.weight"], module.net[0].weight.detach())
    assert loaded["optimizer_states"][0]["state"][0]["exp_avg"].shape == (8, 4)
    assert isinstance(loaded["lr_schedulers"][0]["step_size"], int)

    resumed = TinyModule()
    t2 = trainer(tmp_path, io, 6)
    t2.fit(resumed, ckpt_path=str(tmp_path / "ckpts" / name))
    assert resumed.started_at == 4 and t2.global_step == 6
    assert CheckpointStore(f"{model_dir.url}/epoch=1-step=6.ckpt", storage_options=model_dir.storage_options).latest().step == 6

    # last.ckpt was saved at steps 2, 4 and 6: like the file it stands for, it holds only the last.
    assert [i.step for i in CheckpointStore(f"{model_dir.url}/last.ckpt", storage_options=model_dir.storage_options).list()] == [6]

    io.remove_checkpoint(tmp_path / "ckpts" / name)
    assert not list(store.storage.list())
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(name)


def test_values_that_would_need_pickle_are_refused(local_dir: ModelDir) -> None:
    io = CkptStoreCheckpointIO(local_dir.url)
    with pytest.raises(TypeError, match="cannot be stored without pickle"):
        io.save_checkpoint({"global_step": 1, "hyper_parameters": {"fn": print}}, "x.ckpt")


def test_lightnings_async_wrapper_saves_through_the_plugin_in_the_background(local_dir: ModelDir) -> None:
    from pytorch_lightning.plugins.io import AsyncCheckpointIO

    saved_on: list[str] = []

    class Recording(CkptStoreCheckpointIO):
        def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
            saved_on.append(threading.current_thread().name)
            super().save_checkpoint(*args, **kwargs)

    module = TinyModule()
    trainer(Path(local_dir.url).parent, AsyncCheckpointIO(Recording(local_dir.url)), 4).fit(module)
    assert saved_on and threading.main_thread().name not in saved_on  # every save ran off the training thread
    io = CkptStoreCheckpointIO(local_dir.url)
    assert sorted(p.name for p in Path(local_dir.url).iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    loaded = io.load_checkpoint("last.ckpt")  # fit returned after the wrapper's last save had finished
    assert loaded["global_step"] == 4 and torch.equal(loaded["state_dict"]["net.0.weight"], module.net[0].weight.detach())


def test_a_save_replaces_what_its_name_held_even_an_older_step(local_dir: ModelDir) -> None:
    io = CkptStoreCheckpointIO(local_dir.url)
    weights = {"w": torch.arange(4.0)}
    io.save_checkpoint({"global_step": 10, "state_dict": weights}, "ckpts/last.ckpt")
    io.save_checkpoint({"global_step": 12, "state_dict": {"w": weights["w"] + 1}}, "ckpts/last.ckpt")
    store = io.store_for("last.ckpt")
    assert [i.step for i in store.list()] == [12]  # the older checkpoint is pruned once the new one commits
    # A new run in the same directory saves step 2 where step 12 is: the name now means the new run's.
    io.save_checkpoint({"global_step": 2, "state_dict": {"w": -weights["w"]}}, "ckpts/last.ckpt")
    assert [i.step for i in store.list()] == [2]
    loaded = io.load_checkpoint("last.ckpt")
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], -weights["w"])
    io.save_checkpoint({"global_step": 2, "state_dict": weights}, "ckpts/last.ckpt")  # the same step again
    assert [i.step for i in store.list()] == [2] and torch.equal(io.load_checkpoint("last.ckpt")["state_dict"]["w"], weights["w"])


def test_retention_is_left_to_model_checkpoint() -> None:
    with pytest.raises(ValueError, match="keep_max: ModelCheckpoint"):
        CkptStoreCheckpointIO("/tmp/unused", keep_max=3)


def test_the_plugin_is_accepted_by_the_lightning_namespace_in_use() -> None:
    from lightning_fabric.plugins import CheckpointIO

    assert isinstance(CkptStoreCheckpointIO("/tmp/unused"), CheckpointIO)


def _ddp_run(out: Any, max_steps: int, resume: str | None = None) -> list[dict[str, Any]]:
    """Run ``trials/lightning_ddp.py`` as a user would (Lightning starts rank 1 from it); each rank's report."""
    script = Path(__file__).parent / "trials" / "lightning_ddp.py"
    done = subprocess.run([sys.executable, str(script), str(out), str(max_steps), *([resume] if resume else [])],
                          cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr and "already committed" not in done.stderr, done.stderr[-4000:]
    return [json.loads((out / f"rank{rank}-{max_steps}.json").read_text()) for rank in range(2)]


def _assert_weights(checkpoint: dict[str, Any], weights: dict[str, Any]) -> None:
    state = checkpoint["state_dict"]
    assert sorted(state) == sorted(weights)
    for name, values in weights.items():
        assert torch.equal(state[name], torch.tensor(values, dtype=state[name].dtype)), name


def test_ddp_training_on_two_ranks_checkpoints_once_and_resumes_every_rank(tmp_path) -> None:
    # Lightning's DDP strategy saves from rank 0 only and loads on every rank; both go through the plugin.
    first = _ddp_run(tmp_path, 4)
    assert [(r["rank"], r["world_size"], r["started_at"], r["global_step"]) for r in first] == [(0, 2, 0, 4), (1, 2, 0, 4)]
    assert first[0]["weights"] == first[1]["weights"]  # DDP kept the ranks in step
    model_dir = tmp_path / "model_dir"
    assert sorted(p.name for p in model_dir.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
    io = CkptStoreCheckpointIO(model_dir)
    for name, step in [("epoch=0-step=2.ckpt", 2), ("epoch=1-step=4.ckpt", 4), ("last.ckpt", 4)]:  # rank 0's saves
        assert [i.step for i in CheckpointStore(model_dir / name).list()] == [step], name
    _assert_weights(io.load_checkpoint("epoch=1-step=4.ckpt"), first[0]["weights"])

    second = _ddp_run(tmp_path, 6, resume="epoch=1-step=4.ckpt")
    assert [(r["started_at"], r["global_step"]) for r in second] == [(4, 6), (4, 6)]  # both ranks resumed
    assert second[0]["weights"] == second[1]["weights"] != first[0]["weights"]
    assert CheckpointStore(model_dir / "last.ckpt").latest().step == 6
    _assert_weights(io.load_checkpoint("epoch=2-step=6.ckpt"), second[0]["weights"])
    _assert_weights(io.load_checkpoint("last.ckpt"), second[0]["weights"])
