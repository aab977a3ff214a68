"""Trainer(plugins=[CkptStoreCheckpointIO(model_dir)]): checkpoints in ckptstore, resumed, deleted."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import ModelDir

from ckptstore import CheckpointStore

pl = pytest.importorskip("pytorch_lightning")

from ckptstore_torch.lightning import CkptStoreCheckpointIO  # noqa: E402


class TinyModule(pl.LightningModule):
    def __init__(self, hidden: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def on_train_start(self) -> None:
        self.started_at = self.trainer.global_step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2)}

    def train_dataloader(self) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def trainer(tmp_path: Any, io: CkptStoreCheckpointIO, max_steps: int) -> Any:
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

    io.remove_checkpoint(tmp_path / "ckpts" / name)
    assert not list(store.storage.list())
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(name)


def test_values_that_would_need_pickle_are_refused(local_dir: ModelDir) -> None:
    io = CkptStoreCheckpointIO(local_dir.url)
    with pytest.raises(TypeError, match="cannot be stored without pickle"):
        io.save_checkpoint({"global_step": 1, "hyper_parameters": {"fn": print}}, "x.ckpt")


def test_the_plugin_is_accepted_by_the_lightning_namespace_in_use() -> None:
    from lightning_fabric.plugins import CheckpointIO

    assert isinstance(CkptStoreCheckpointIO("/tmp/unused"), CheckpointIO)
