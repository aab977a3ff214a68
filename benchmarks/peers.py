"""ckptstore next to its peers on one workload: durable save, cold and warm restore, peak extra memory.

Peers: a naive one-file-per-tensor writer/reader (the unit every ratio is expressed in, as in
``../shared/notes/performance.md``), the best raw writer (ckptstore bench's baseline: the same shard
files and threads as ckptstore, fsync'd, page-aligned reads), np.save, safetensors, torch.save,
torch.distributed.checkpoint (2 writer threads) and orbax-checkpoint — each when importable.

Method: one synthetic model (``ckptstore.bench``), generated once. Each repetition runs every
implementation in turn, in an order rotated per repetition (interleaved, so a busy neighbour on a shared
machine hurts everyone alike): save into a fresh directory and fsync every file it wrote (the time counts:
a checkpoint that is not on disk is not a checkpoint), evict the files from the page cache with
posix_fadvise, restore (cold), restore again (warm), delete. Restores return arrays in memory (torch
tensors for the torch peers); ckptstore verifies its chunk checksums on every restore, as in production.

Usage (see benchmarks/README.md; results go to benchmarks/results/):

    .venv-bench/bin/python benchmarks/peers.py --size 1GiB --repeat 3
    .venv-bench/bin/python benchmarks/peers.py s3://bucket/peers --option endpoint_url=http://127.0.0.1:9000 ...

With a URL, the peers that can write through fsspec (ckptstore, raw, safetensors, torch.save, np.save)
run against that store instead; there is no cold restore there (the server's cache is out of reach).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import io
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckptstore import CheckpointStore, bench

RESULTS = Path(__file__).parent / "results"
OPS = ("save", "restore_cold", "restore_warm", "save_blocked")
OP_LABELS = {"save": "durable save", "restore_cold": "cold restore", "restore_warm": "warm restore",
             "save_blocked": "async save: time blocked"}


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


@dataclass
class Peer:
    """One implementation: ``save(model, where)`` and ``restore(where) -> loaded``; ``where`` is a path or URL."""

    name: str
    save: Callable[[Mapping[str, np.ndarray], str], None]
    restore: Callable[[str], Any]
    note: str = ""
    remote: bool = False  # works on an fsspec URL too
    # Asynchronous save: ``save_async(model, where, n)`` starts save number ``n`` into ``where`` and
    # returns once the caller may go on, with a function that waits for the write to finish; ``n < 0``
    # returns a function that releases what the peer kept for ``where``.
    save_async: Callable[[Mapping[str, np.ndarray], str, int], Callable[[], Any]] | None = None
    async_note: str = ""


def _file_name(name: str, ext: str) -> str:
    return name.replace("/", "__") + ext


def _fs(url: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url, **options)


def make_peers(model: Mapping[str, np.ndarray], workers: int, options: Mapping[str, Any], only: set[str] | None,
               local: bool = True) -> tuple[list[Peer], dict[str, str]]:
    """Every peer that imports here, and why each missing one is missing."""
    peers: list[Peer] = []
    missing: dict[str, str] = {}
    names = list(model)
    shapes = {n: (a.shape, a.dtype) for n, a in model.items()}

    def want(name: str) -> bool:
        return only is None or name in only

    # -- ckptstore ------------------------------------------------------------------------------
    def ck_save(m: Mapping[str, np.ndarray], where: str) -> None:
        with CheckpointStore(where, storage_options=options, workers=workers) as s:
            s.save(0, m)

    def ck_restore(where: str) -> Any:
        with CheckpointStore(where, storage_options=options, workers=workers) as s:
            return s.restore(0)

    async_stores: dict[str, CheckpointStore] = {}

    def ck_async(m: Mapping[str, np.ndarray], where: str, n: int) -> Callable[[], Any]:
        if n < 0:
            store = async_stores.pop(where, None)
            return store.close if store is not None else (lambda: None)
        if where not in async_stores:  # one store per job, as in training: its staging memory is reused
            async_stores[where] = CheckpointStore(where, storage_options=options, workers=workers)
        return async_stores[where].save(n, m, blocking=False).result

    if want("ckptstore"):
        peers.append(Peer("ckptstore", ck_save, ck_restore, f"{workers} threads, checksums verified", remote=True,
                          save_async=ck_async, async_note="save(blocking=False); staging memory reused"))

    # -- raw (best) -----------------------------------------------------------------------------
    with CheckpointStore(tempfile.mkdtemp(prefix="ckptstore-plan-"), workers=workers) as planner:
        plan = bench.store_plan(planner, model)
        shutil.rmtree(planner.model_dir, ignore_errors=True)
    raws: dict[str, bench.RawBaseline] = {}

    def raw_save(m: Mapping[str, np.ndarray], where: str) -> None:
        raws[where] = bench.RawBaseline(where, options, writeback=True)
        raws[where].save(m, plan, workers)

    def raw_restore(where: str) -> Any:
        return raws[where].restore(workers)

    staging: dict[str, np.ndarray] = {}

    def raw_async(m: Mapping[str, np.ndarray], where: str, n: int) -> Callable[[], Any]:
        if n < 0:
            return lambda: staging.pop(where, None)
        if where not in staging:
            staging[where] = bench.empty_aligned((sum(a.nbytes for a in m.values()),), np.dtype(np.uint8))
        bench.snapshot_copy(m, staging[where], workers)
        return lambda: None

    if want("raw"):
        how = "fsync, writeback started every 8 MiB" if local else "the backend's put"
        peers.append(Peer("raw (best)", raw_save, raw_restore,
                          f"{len(plan.shards)} files × {workers} threads, {how}, page-aligned reads", remote=True,
                          save_async=raw_async,
                          async_note=f"only a copy of the model into allocated memory, {workers} threads"))

    # -- naive one file per tensor ----------------------------------------------------------------
    def naive_save(m: Mapping[str, np.ndarray], where: str) -> None:
        os.makedirs(where, exist_ok=True)
        for n, a in m.items():
            with open(os.path.join(where, _file_name(n, ".bin")), "wb") as f:
                f.write(memoryview(a.reshape(-1).view(np.uint8)))

    def naive_restore(where: str) -> Any:
        out = {}
        for n in names:
            shape, dtype = shapes[n]
            arr = np.empty(shape, dtype)
            with open(os.path.join(where, _file_name(n, ".bin")), "rb", buffering=0) as f:
                f.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
            out[n] = arr
        return out

    if want("naive"):
        peers.append(Peer("naive file/tensor", naive_save, naive_restore, "1 thread, f.write / readinto"))

    # -- np.save --------------------------------------------------------------------------------
    def npy_save(m: Mapping[str, np.ndarray], where: str) -> None:
        fs, root = _fs(where, options)
        fs.makedirs(root, exist_ok=True)
        for n, a in m.items():
            with fs.open(f"{root}/{_file_name(n, '.npy')}", "wb") as f:
                np.save(f, a, allow_pickle=False)

    def npy_restore(where: str) -> Any:
        fs, root = _fs(where, options)
        if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
            return {n: np.load(os.path.join(root, _file_name(n, ".npy")), allow_pickle=False) for n in names}
        return {n: np.load(io.BytesIO(fs.cat_file(f"{root}/{_file_name(n, '.npy')}")), allow_pickle=False)
                for n in names}

    if want("npy"):
        peers.append(Peer("np.save", npy_save, npy_restore, "1 file per tensor, 1 thread", remote=True))

    # -- safetensors ----------------------------------------------------------------------------
    try:
        import safetensors.numpy as stn

        def st_save(m: Mapping[str, np.ndarray], where: str) -> None:
            fs, root = _fs(where, options)
            fs.makedirs(root, exist_ok=True)
            if "file" in fs.protocol:
                stn.save_file(dict(m), os.path.join(root, "model.safetensors"))
            else:
                fs.pipe_file(f"{root}/model.safetensors", stn.save(dict(m)))

        def st_restore(where: str) -> Any:
            fs, root = _fs(where, options)
            if "file" in fs.protocol:
                return stn.load_file(os.path.join(root, "model.safetensors"))
            return stn.load(fs.cat_file(f"{root}/model.safetensors"))

        if want("safetensors"):
            peers.append(Peer("safetensors", st_save, st_restore,
                              f"{_version('safetensors')}, one file, save_file/load_file", remote=True))
    except ImportError as e:
        missing["safetensors"] = str(e)

    # -- torch ----------------------------------------------------------------------------------
    try:
        import torch

        torch.set_num_threads(max(1, workers))
        tmodel = {n: torch.from_numpy(a) for n, a in model.items()}

        def ts_save(m: Mapping[str, np.ndarray], where: str) -> None:
            fs, root = _fs(where, options)
            fs.makedirs(root, exist_ok=True)
            with fs.open(f"{root}/model.pt", "wb") as f:
                torch.save(tmodel, f)

        def ts_restore(where: str) -> Any:
            fs, root = _fs(where, options)
            if "file" in fs.protocol:
                return torch.load(os.path.join(root, "model.pt"), weights_only=True)
            return torch.load(io.BytesIO(fs.cat_file(f"{root}/model.pt")), weights_only=True)

        if want("torch.save"):
            peers.append(Peer("torch.save", ts_save, ts_restore,
                              f"torch {torch.__version__}, one file, torch.load(weights_only=True)", remote=True))

        import torch.distributed.checkpoint as dcp

        def dcp_save(m: Mapping[str, np.ndarray], where: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.save(tmodel, storage_writer=dcp.FileSystemWriter(where, thread_count=workers))

        def dcp_restore(where: str) -> Any:
            sd = {n: torch.empty(tuple(t.shape), dtype=t.dtype) for n, t in tmodel.items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.load(sd, storage_reader=dcp.FileSystemReader(where))
            return sd

        def dcp_async(m: Mapping[str, np.ndarray], where: str, n: int) -> Callable[[], Any]:
            if n < 0:
                return lambda: None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                writer = dcp.FileSystemWriter(f"{where}/s{n}", thread_count=workers)
                future = dcp.async_save(tmodel, storage_writer=writer)
            return future.result

        if want("dcp"):
            peers.append(Peer("torch DCP", dcp_save, dcp_restore,
                              f"torch.distributed.checkpoint, FileSystemWriter(thread_count={workers}), no process group",
                              save_async=dcp_async, async_note="dcp.async_save"))
    except ImportError as e:
        missing["torch"] = str(e)

    # -- orbax ----------------------------------------------------------------------------------
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import orbax.checkpoint as ocp

        def ob_save(m: Mapping[str, np.ndarray], where: str) -> None:
            with ocp.StandardCheckpointer() as ck:
                ck.save(where, dict(m))
                ck.wait_until_finished()

        def ob_restore(where: str) -> Any:
            with ocp.StandardCheckpointer() as ck:
                return ck.restore(where)

        async_ckptrs: dict[str, Any] = {}

        def ob_async(m: Mapping[str, np.ndarray], where: str, n: int) -> Callable[[], Any]:
            if n < 0:
                ck = async_ckptrs.pop(where, None)
                return ck.close if ck is not None else (lambda: None)
            if where not in async_ckptrs:
                async_ckptrs[where] = ocp.StandardCheckpointer()
            ck = async_ckptrs[where]
            ck.save(f"{where}/s{n}", dict(m))
            return ck.wait_until_finished

        if want("orbax"):
            peers.append(Peer("orbax", ob_save, ob_restore, save_async=ob_async,
                              async_note="StandardCheckpointer.save (asynchronous); checkpointer reused",
                              note=f"orbax-checkpoint {_version('orbax-checkpoint')} StandardCheckpointer (OCDBT), "
                              "waited until finished"))
    except ImportError as e:
        missing["orbax-checkpoint"] = str(e)
    return peers, missing


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def fsync_tree(path: str) -> None:
    """fsync every file and directory under ``path`` (what makes a save durable, for every peer alike)."""
    for d, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _measure(fn: Callable[[], Any]) -> tuple[float, int]:
    gc.collect()
    with bench.RssSampler() as rss:
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
    del result
    gc.collect()
    return seconds, rss.peak_extra


@dataclass
class Record:
    seconds: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    rss: dict[str, list[int]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: list[str] = field(default_factory=list)


def run(peers: list[Peer], model: Mapping[str, np.ndarray], root: str, repeat: int, options: Mapping[str, Any],
        local: bool, log: Callable[[str], None]) -> dict[str, Record]:
    records = {p.name: Record() for p in peers}
    for rep in range(repeat):
        shift = rep % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            where = f"{root.rstrip('/')}/r{rep}-{peer.name.split()[0].replace('.', '_')}"
            rec = records[peer.name]
            try:
                def save(peer: Peer = peer, where: str = where) -> None:
                    peer.save(model, where)
                    if local:
                        fsync_tree(where)

                rec_s = _measure(save)
                rec.seconds["save"].append(rec_s[0])
                rec.rss["save"].append(rec_s[1])
                if local:
                    bench.drop_cache([where], "fadvise")
                    s, m = _measure(lambda peer=peer, where=where: peer.restore(where))
                    rec.seconds["restore_cold"].append(s)
                    rec.rss["restore_cold"].append(m)
                    bench.fill_cache([where])  # warm: in the page cache, which a direct read does not fill
                s, m = _measure(lambda peer=peer, where=where: peer.restore(where))
                rec.seconds["restore_warm"].append(s)
                rec.rss["restore_warm"].append(m)
                log(f"r{rep + 1} {peer.name}: save {rec.seconds['save'][-1]:.2f} s, warm restore {s:.2f} s")
                if peer.save_async is not None:
                    # Steady state: a first async save (untimed) sets up what the peer reuses.
                    bg = f"{where}-async"
                    try:
                        peer.save_async(model, bg, 1)()
                        waiters: list[Callable[[], Any]] = []
                        s, m = _measure(lambda peer=peer, bg=bg, waiters=waiters: waiters.append(
                            peer.save_async(model, bg, 2)))
                        for wait in waiters:
                            wait()
                        rec.seconds["save_blocked"].append(s)
                        rec.rss["save_blocked"].append(m)
                    finally:
                        peer.save_async(model, bg, -1)()
                        _remove(bg, options, local)
                if rec.seconds["save_blocked"]:
                    log(f"r{rep + 1} {peer.name}: async save blocked {rec.seconds['save_blocked'][-1]:.2f} s")
            except Exception as e:  # one broken peer must not sink the comparison; it is reported
                rec.errors.append(f"{type(e).__name__}: {e}")
                log(f"r{rep + 1} {peer.name}: FAILED {type(e).__name__}: {e}")
            finally:
                _remove(where, options, local)
    return records


def _remove(where: str, options: Mapping[str, Any], local: bool) -> None:
    if local:
        shutil.rmtree(where, ignore_errors=True)
        return
    fs, root = _fs(where, options)
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        df = subprocess.run(["df", "-hT", tempfile.gettempdir()], capture_output=True, text=True, check=True)
        info["disk"] = " ".join(df.stdout.splitlines()[-1].split()[:3])
    except (OSError, subprocess.CalledProcessError):
        pass
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info["packages"] = {d: _version(d) for d in ("ckptstore", "numpy", "safetensors", "torch", "orbax-checkpoint",
                                                 "jax", "crc32c", "xxhash", "fsspec", "s3fs")}
    return info


def summarize(records: Mapping[str, Record], nbytes: int, baseline: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = records.get(baseline)
    for name, rec in records.items():
        row: dict[str, Any] = {"errors": rec.errors}
        for op in OPS:
            secs = rec.seconds[op]
            if not secs:
                continue
            med = statistics.median(secs)
            row[op] = {
                "seconds": secs, "median_s": med, "min_s": min(secs), "max_s": max(secs),
                "mb_s": nbytes / med / 1e6, "mb_s_min": nbytes / max(secs) / 1e6, "mb_s_max": nbytes / min(secs) / 1e6,
                "peak_extra_rss_bytes": max(rec.rss[op]),
            }
            if base is not None and base.seconds[op]:
                row[op]["vs_naive"] = statistics.median(base.seconds[op]) / med
        out[name] = row
    return out


def markdown(summary: Mapping[str, Any], peers: list[Peer], missing: Mapping[str, str], meta: Mapping[str, Any]) -> str:
    m = meta["machine"]
    unit = "×naive" if meta["local"] else "×raw"
    lines = [
        f"# ckptstore vs peers — {meta['location']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Run: {meta['date']}, {meta['seconds']:.0f} s. Model: {bench.format_size(meta['nbytes'])} float32 in "
        f"{meta['num_tensors']} tensors ({meta['preset']}: {meta['sizes']}); {meta['repeat']} interleaved "
        "repetitions (order rotated each time).",
        "",
        f"Machine: {m.get('nproc')} cores ({m.get('cpu', '?')}), {m.get('ram_gib', '?')} GiB RAM, disk "
        f"`{m.get('disk', '?')}`, Python {m['python']}, {m['platform']}; load average at start "
        f"{m['loadavg_at_start']} and end {meta['loadavg_at_end']} (the machine is shared: other jobs ran too).  ",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v != "not installed") + ".",
        "",
        ("Throughput is MB/s of tensor bytes, median [min–max]; **×naive** is the median throughput as a "
         "multiple of the naive one-file-per-tensor writer/reader in the same run (the unit used in "
         "`shared/notes/performance.md`). Save = the call + fsync of every file it wrote. Cold = after "
         "posix_fadvise(DONTNEED) of those files." if meta["local"] else
         "Throughput is MB/s of tensor bytes, median [min–max]; **×raw** is the median throughput as a multiple "
         "of the raw baseline (the backend's own put/read_into of the same bytes, same threads) in the same run. "
         "Save = until the store acknowledged every object. No cold restore: the server's cache is out of reach; "
         "restores read over loopback HTTP from a server sharing the 2 cores.") +
        " Peak extra RSS is the highest resident-memory rise during the call, as a multiple of the model size.",
        "",
        f"| implementation | durable save MB/s | {unit} | cold restore MB/s | {unit} | warm restore MB/s | {unit} "
        "| peak extra RSS save / restore |",
        "|---|---|---|---|---|---|---|---|",
    ]
    nbytes = meta["nbytes"]

    def cell(row: Mapping[str, Any], op: str) -> tuple[str, str]:
        if op not in row:
            return "n/a", ""
        r = row[op]
        ratio = f"{r['vs_naive']:.2f}" if "vs_naive" in r else ""
        return f"{r['mb_s']:.0f} [{r['mb_s_min']:.0f}–{r['mb_s_max']:.0f}]", ratio

    for p in peers:
        row = summary[p.name]
        if row["errors"] and "save" not in row:
            lines.append(f"| {p.name} | failed: {row['errors'][0][:80]} | | | | | | |")
            continue
        cells = [c for op in OPS[:3] for c in cell(row, op)]
        rss_save = row["save"]["peak_extra_rss_bytes"] / nbytes if "save" in row else float("nan")
        rss_restore = max(row[op]["peak_extra_rss_bytes"] for op in ("restore_cold", "restore_warm") if op in row) / nbytes
        name = f"**{p.name}**" if p.name == "ckptstore" else p.name
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rss_save:.2f}× / {rss_restore:.2f}× |")
    async_peers = [p for p in peers if "save_blocked" in summary[p.name]]
    if async_peers:
        base = summary.get("raw (best)", {}).get("save_blocked")
        lines += [
            "",
            "Asynchronous saves — how long the call holds the training loop (the write goes on in the "
            "background), in the steady state (a first untimed async save sets up what each peer reuses). "
            "**×copy** = the time as a multiple of one plain copy of the model into allocated memory with the "
            "same threads (the `raw (best)` row): the least any snapshot costs.",
            "",
            "| implementation | time blocked, median [min–max] | s per GiB | ×copy | peak extra RSS | how |",
            "|---|---|---|---|---|---|",
        ]
        for p in async_peers:
            r = summary[p.name]["save_blocked"]
            times = f"{bench.format_seconds(r['median_s'])} [{bench.format_seconds(r['min_s'])}–" \
                    f"{bench.format_seconds(r['max_s'])}]"
            ratio = f"{r['median_s'] / base['median_s']:.1f}" if base else ""
            name = f"**{p.name}**" if p.name == "ckptstore" else p.name
            lines.append(f"| {name} | {times} | {r['median_s'] / (nbytes / 2**30):.2f} | {ratio} | "
                         f"{r['peak_extra_rss_bytes'] / nbytes:.2f}× | {p.async_note} |")
    lines += ["", "Peers as configured:", ""]
    lines += [f"- **{p.name}**: {p.note}" for p in peers]
    for name, why in missing.items():
        lines.append(f"- **{name}**: not run — {why}")
    failures = [(p.name, e) for p in peers for e in summary[p.name]["errors"]]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {n}: {e}" for n, e in failures]
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], peers: list[Peer], meta: Mapping[str, Any], path: Path) -> None:
    plt = bench.require_matplotlib()
    ops = [op for op in OPS if any(op in summary[p.name] for p in peers)]
    gib = meta["nbytes"] / 2**30
    ncols = min(2, len(ops))
    nrows = -(-len(ops) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows + 0.5), dpi=110, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(ops):]:
        ax.set_visible(False)
    for ax, op in zip(axes, ops, strict=False):
        names = [p.name for p in peers if op in summary[p.name]]
        if op == "save_blocked":  # seconds blocked per GiB: lower is better
            meds = [summary[n][op]["median_s"] / gib for n in names]
            lo = [(summary[n][op]["median_s"] - summary[n][op]["min_s"]) / gib for n in names]
            hi = [(summary[n][op]["max_s"] - summary[n][op]["median_s"]) / gib for n in names]
        else:
            meds = [summary[n][op]["mb_s"] for n in names]
            lo = [summary[n][op]["mb_s"] - summary[n][op]["mb_s_min"] for n in names]
            hi = [summary[n][op]["mb_s_max"] - summary[n][op]["mb_s"] for n in names]
        colors = ["#3b6ea5" if n == "ckptstore" else "#9a9a9a" if n.startswith(("raw", "naive")) else "#d08c3a"
                  for n in names]
        ys = range(len(names))
        ax.barh(list(ys), meds, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(OP_LABELS[op], fontsize=10)
        blocked = op == "save_blocked"
        ax.set_xlabel("seconds blocked per GiB (lower is better)" if blocked else "MB/s (median, min–max)",
                      fontsize=8)
        for y, v in zip(ys, meds, strict=True):
            ax.annotate(f"{v:.2f}" if blocked else f"{v:.0f}", (0, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7,
                        color="white")
    fig.suptitle(f"{bench.format_size(meta['nbytes'])} {meta['preset']} model, {meta['location']}, "
                 f"{meta['repeat']} repeats, {meta['machine']['nproc']} cores (shared)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="?", help="object-store URL (default: local disk, a temp dir)")
    p.add_argument("--size", type=bench.parse_size, default=1 << 30)
    p.add_argument("--preset", choices=bench.PRESETS, default="mixed")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="threads for ckptstore, raw and DCP (default 2)")
    p.add_argument("--only", help="comma-separated subset: ckptstore,raw,naive,npy,safetensors,torch.save,dcp,orbax")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dir", help="local scratch directory (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the .md/.json/.png")
    p.add_argument("--name", help="result file stem (default: peers-<location>-<size>)")
    args = p.parse_args(argv)
    options: dict[str, Any] = {}
    for item in args.option:
        k, _, v = item.partition("=")
        options[k] = int(v) if v.isdigit() else v

    started = time.time()
    sizes = bench.tensor_sizes(args.size, args.preset)
    model = bench.synthetic_model(sizes)
    nbytes = sum(sizes)
    local = args.url is None
    only = set(args.only.split(",")) if args.only else None
    peers, missing = make_peers(model, args.workers, options, only, local)
    if not local:
        peers = [x for x in peers if x.remote]
    root = args.url or tempfile.mkdtemp(prefix="ckptstore-peers-", dir=args.dir)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"{len(peers)} implementations, {bench.format_size(nbytes)} in {len(sizes)} tensors, root {root}")
    meta_machine = machine()
    try:
        records = run(peers, model, root, args.repeat, options, local, log)
    finally:
        if local:
            shutil.rmtree(root, ignore_errors=True)
    baseline = "naive file/tensor" if local else "raw (best)"
    summary = summarize(records, nbytes, baseline)
    location = "local disk" if local else args.url.split("://")[0] + "://"
    meta = {
        "command": "python benchmarks/peers.py " + " ".join(
            shlex.quote(re.sub(r"((?:key|secret|token|password)=).*", r"\1…", a)) for a in (argv or sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": time.time() - started,
        "location": location,
        "nbytes": nbytes, "num_tensors": len(sizes), "preset": args.preset, "sizes": bench.describe_sizes(sizes),
        "repeat": args.repeat, "workers": args.workers,
        "machine": meta_machine, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "local": local, "baseline": baseline,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"peers-{'local' if local else args.url.split('://')[0]}-{bench.format_size(nbytes).replace(' ', '')}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": summary,
                                                        "missing": missing}, indent=2) + "\n")
    md = markdown(summary, peers, missing, meta)
    (args.out / f"{stem}.md").write_text(md)
    try:
        plot(summary, peers, meta, args.out / f"{stem}.png")
    except ImportError as e:
        log(f"no plot: {e}")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
