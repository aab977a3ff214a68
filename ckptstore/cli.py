"""The ``ckptstore`` command: benchmark a storage, and look after the checkpoints in a model_dir.

Thin by design: each command parses its arguments, calls the library (``CheckpointStore``,
``ckptstore.bench``) and formats the answer for a person (aligned tables, human sizes) or, with
``--json``, for a program. Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ckptstore import bench
from ckptstore.bench import format_seconds, format_size, format_table
from ckptstore.errors import CkptStoreError, FormatError, NotFound, StorageError
from ckptstore.format import Manifest, TensorEntry
from ckptstore.manager import CheckpointStore, __version__

EXIT_OK = 0
EXIT_PROBLEMS = 1  # verify found damage; diff found structural differences
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_ERROR = 3  # the command could not run: not found, storage failure, bad value ...
EXIT_INTERRUPTED = 130

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    success (diff: same tensor names, shapes and dtypes)
  {EXIT_PROBLEMS}    verify found a damaged checkpoint; diff found added/removed tensors or shape/dtype changes
  {EXIT_USAGE}    bad command line
  {EXIT_ERROR}    the command failed (no such checkpoint, storage unreachable, invalid value ...)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""

VERIFY_BATCH = 256 << 20  # verify reads at most this many tensor bytes into memory at once

log = logging.getLogger("ckptstore")


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A model_dir URL with an optional step (``URL@STEP``; ``URL`` or ``URL@latest`` mean the latest)."""

    url: str
    step: int | None

    def __str__(self) -> str:
        return self.url if self.step is None else f"{self.url}@{self.step}"


def parse_target(text: str) -> Target:
    url, sep, suffix = text.rpartition("@")
    if sep and url and (suffix.isdigit() or suffix == "latest"):
        return Target(url, None if suffix == "latest" else int(suffix))
    return Target(text, None)


def parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered == "none":
        return key, None
    if value.isdigit():
        return key, int(value)
    return key, value


def _size(text: str) -> int:
    try:
        return bench.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _options(args: argparse.Namespace, url: str, side: str | None = None) -> dict[str, Any]:
    """Backend options for ``url``: ``--option`` (remote URLs only) overridden by ``--src/dst-option``."""
    local = "://" not in url or url.startswith("file://")
    options = {} if local else dict(getattr(args, "option", None) or [])
    if side is not None:
        options |= dict(getattr(args, f"{side}_option", None) or [])
    return options


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _compact(value: Any, limit: int = 60) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = value if isinstance(value, str) else json.dumps(_jsonable(value), default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metadata_summary(metadata: Mapping[str, Any], limit: int = 48) -> str:
    text = " ".join(f"{k}={_compact(v, 20)}" for k, v in metadata.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _print_json(doc: Any) -> None:
    print(json.dumps(_jsonable(doc), indent=2))


def _local_dir_must_exist(url: str) -> None:
    """Read-only commands must not create a local model_dir by opening it (a typo would pass silently)."""
    if "://" in url and not url.startswith("file://"):
        return
    path = url[len("file://"):] if url.startswith("file://") else url
    if not os.path.isdir(os.path.expanduser(path)):
        raise NotFound(f"{path}: no such directory")


def _open(
    url: str, options: Mapping[str, Any], *, must_exist: bool = True, read_only: bool = False
) -> CheckpointStore:
    if must_exist:
        _local_dir_must_exist(url)
    # Inspection commands never write, not even to repair a lagging LATEST: they may run with
    # read-only credentials, and looking must not change what is looked at.
    return CheckpointStore(url, storage_options=options, read_only=read_only)


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    if args.plot:
        bench.require_matplotlib()  # fail before minutes of benchmarking, not after
    config = bench.BenchConfig(
        url=args.url,
        total_bytes=args.size,
        preset=args.preset,
        num_tensors=args.tensors,
        max_shard_size=args.shard_size,
        workers=args.workers,
        repeat=args.repeat,
        cold=args.cold,
        verify=not args.no_verify,
        storage_options=_options(args, args.url or ""),
        keep=args.keep,
        seed=args.seed,
        baseline=args.baseline,
    )
    note = sys.stderr if args.json else sys.stdout
    bars: list[_Bar] = []

    def announce(url: str) -> None:
        fate = "kept afterwards" if args.keep else "removed afterwards; --keep keeps it"
        print(f"benchmarking in {url} ({fate})", file=note, flush=True)
        bar = _progress_bar(args, config, url)
        if bar is not None:
            bars.append(bar)

    def progress(label: str) -> None:
        for bar in bars:
            bar.step(label)

    try:
        result = bench.run(config, progress=progress, announce=announce)
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        print(bench.dumps(result))
    else:
        print(bench.format_report(result))
    if args.plot:
        bench.plot(result, args.plot)
        print(f"plot written to {args.plot}", file=note)
    return EXIT_OK


class _Bar:
    def __init__(self, tqdm: Any, total: int):
        self._bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False, dynamic_ncols=True)

    def step(self, label: str) -> None:
        self._bar.set_description(label)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _progress_bar(args: argparse.Namespace, config: bench.BenchConfig, url: str) -> _Bar | None:
    """A tqdm bar on stderr when it is a terminal and tqdm is installed; nothing otherwise."""
    if args.quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return _Bar(tqdm, bench.steps_per_run(config, url))


# ---------------------------------------------------------------------------------------------
# ls / show
# ---------------------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    with _open(args.url, _options(args, args.url), read_only=True) as store:
        infos = store.list()
        latest = store.latest() if infos else None
        pinned = store.pinned() if infos else frozenset()
    latest_step = latest.step if latest else None
    if args.json:
        _print_json([
            {"step": i.step, "time": i.time, "nbytes": i.nbytes, "num_tensors": i.num_tensors,
             "latest": i.step == latest_step, "pinned": i.step in pinned, "metadata": dict(i.metadata)}
            for i in infos
        ])
        return EXIT_OK
    if not infos:
        print(f"no committed checkpoints in {args.url}", file=sys.stderr)
        return EXIT_OK
    rows = [["STEP", "SAVED (UTC)", "SIZE", "TENSORS", "LATEST", "PINNED", "METADATA"]]
    for i in infos:
        rows.append([str(i.step), _when(i.time), format_size(i.nbytes), str(i.num_tensors),
                     "LATEST" if i.step == latest_step else "", "pinned" if i.step in pinned else "",
                     _metadata_summary(i.metadata)])
    print(format_table(rows, "><><<<<"))
    total = sum(i.nbytes for i in infos)
    print(f"{len(infos)} checkpoint(s), {format_size(total)}")
    return EXIT_OK


def _manifest(store: CheckpointStore, step: int | None) -> Manifest:
    return store.manifest(step)


def cmd_show(args: argparse.Namespace) -> int:
    target = parse_target(args.target)
    with _open(target.url, _options(args, target.url), read_only=True) as store:
        m = _manifest(store, target.step)
        latest = store.latest()
    tensors = list(m.tensors.items())
    blocks = getattr(m.tensors, "blocks", None)  # format 3.1: runs of small tensors checked as one
    nblocks = 0 if blocks is None else len(blocks)
    if args.sort == "size":
        tensors.sort(key=lambda kv: (-kv[1].nbytes, kv[0]))
    elif args.sort == "name":
        tensors.sort(key=lambda kv: kv[0])
    if args.json:
        _print_json({
            "url": target.url, "step": m.step, "latest": latest is not None and latest.step == m.step,
            "time": m.created, "library": m.library, "nbytes": m.nbytes, "shards": dict(m.shards),
            "format": f"{m.major}.{m.minor}", "checksum": m.checksum, "blocks": nblocks,
            "tensors": {n: {"dtype": e.dtype, "shape": list(e.shape), "nbytes": e.nbytes, "chunks": len(e.chunks)}
                        for n, e in tensors},
            "scalars": dict(m.scalars), "metadata": dict(m.metadata),
        })
        return EXIT_OK
    tensor_bytes = sum(e.nbytes for e in m.tensors.values())
    head = [
        ["checkpoint", f"{target.url}@{m.step}" + ("  (LATEST)" if latest and latest.step == m.step else "")],
        ["saved", f"{_when(m.created)} by ckptstore {m.library} (format {m.major}.{m.minor}, {m.checksum} checksums"
                  + (f"; {nblocks} block checksum(s))" if nblocks else ")")],
        ["size", f"{format_size(m.nbytes)} in {len(m.shards)} shard(s); "
                 f"{len(m.tensors)} tensor(s) ({format_size(tensor_bytes)}), {len(m.scalars)} scalar(s)"],
    ]
    if m.metadata:
        for k, (key, value) in enumerate(m.metadata.items()):
            head.append(["metadata" if k == 0 else "", f"{key}: {_compact(value, 100)}"])
    else:
        head.append(["metadata", "(none)"])
    print(format_table(head, "<<"))
    print()
    rows = [["TENSOR", "DTYPE", "SHAPE", "SIZE"]]
    rows += [[n, e.dtype, _shape(e.shape), format_size(e.nbytes)] for n, e in tensors]
    rows += [[n, type(v).__name__, "scalar", _compact(v, 40)] for n, v in sorted(m.scalars.items())]
    if len(rows) > 1:
        print(format_table(rows, "<<<>"))
    else:
        print("(no tensors)")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------


def _batches(entries: Iterable[tuple[str, TensorEntry]], budget: int) -> list[list[str]]:
    out: list[list[str]] = [[]]
    used = 0
    for name, entry in entries:
        if out[-1] and used + entry.nbytes > budget:
            out.append([])
            used = 0
        out[-1].append(name)
        used += entry.nbytes
    return [b for b in out if b]


def verify_step(store: CheckpointStore, step: int | None) -> tuple[Manifest | None, list[str]]:
    """Read every tensor of one checkpoint, checking every checksum; return its manifest and every problem."""
    try:
        m = store.manifest(step)
    except (FormatError, NotFound) as e:
        return None, [str(e)]
    problems: list[str] = []
    for batch in _batches(m.tensors.items(), VERIFY_BATCH):
        try:
            store.restore(m.step, names=batch, verify=True)
        except (FormatError, StorageError, NotFound) as e:
            if len(batch) == 1:
                problems.append(str(e))
                continue
            # Narrow down to every damaged tensor, not only the first one found.
            for name in batch:
                try:
                    store.restore(m.step, names=[name], verify=True)
                except (FormatError, StorageError, NotFound) as e2:
                    problems.append(str(e2))
    return m, list(dict.fromkeys(problems))


def cmd_verify(args: argparse.Namespace) -> int:
    from ckptstore import commit

    target = parse_target(args.target)
    if args.all and target.step is not None:
        raise ValueError("give either URL@STEP or --all, not both")
    failures = 0
    with _open(target.url, _options(args, target.url), read_only=True) as store:
        storage = store.storage
        try:
            pointer, _ = commit.read_latest(storage)
        except FormatError as e:
            print(f"FAIL  LATEST: {e}")
            failures += 1
            pointer = None
        steps: list[int | None]
        if args.all:
            steps = list(commit.committed_steps(storage))
            if pointer is not None and pointer.step not in steps:
                print(f"FAIL  LATEST names step {pointer.step}, which has no committed manifest")
                failures += 1
            if not steps:
                raise NotFound(f"{target.url}: no committed checkpoint")
        else:
            steps = [target.step]
        for step in steps:
            started = time.perf_counter()
            m, problems = verify_step(store, step)
            seconds = time.perf_counter() - started
            label = f"step {m.step}" if m else f"step {step if step is not None else 'latest'}"
            if problems:
                failures += 1
                for p in problems:
                    print(f"FAIL  {label}: {p}")
            else:
                assert m is not None
                rate = f", {m.nbytes / max(seconds, 1e-9) / 1e6:.0f} MB/s" if m.nbytes >= (1 << 20) else ""
                print(f"ok    {label}: {len(m.tensors)} tensor(s), {format_size(m.nbytes)}, "
                      f"every checksum matches ({format_seconds(seconds)}{rate})")
    if failures:
        print(f"ckptstore: verify: {failures} problem(s) found in {target.url}", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------------------------


def _spec(m: Manifest, name: str) -> tuple[str, str]:
    if name in m.tensors:
        return _shape(m.tensors[name].shape), m.tensors[name].dtype
    return "scalar", type(m.scalars[name]).__name__


def _same_data(a: Manifest, b: Manifest, name: str) -> bool | None:
    """True/False when the chunk checksums can tell, None when the chunk layouts differ."""
    if name in a.scalars:
        return a.scalars[name] == b.scalars[name]
    ca, cb = a.tensors[name].chunks, b.tensors[name].chunks
    if [c.nbytes for c in ca] != [c.nbytes for c in cb] or a.checksum != b.checksum:
        return None
    return all(x.checksum == y.checksum for x, y in zip(ca, cb, strict=True))


def cmd_diff(args: argparse.Namespace) -> int:
    a_t = parse_target(args.a)
    b_t = parse_target(args.b)
    if b_t.url == "" or args.b.startswith("@"):
        b_t = Target(a_t.url, parse_target("x" + args.b).step)
    with _open(a_t.url, _options(args, a_t.url), read_only=True) as sa:
        a = sa.manifest(a_t.step)
    with _open(b_t.url, _options(args, b_t.url), read_only=True) as sb:
        b = sb.manifest(b_t.step)
    names_a = list(a.tensors) + list(a.scalars)
    names_b = list(b.tensors) + list(b.scalars)
    set_a, set_b = set(names_a), set(names_b)
    removed = [n for n in names_a if n not in set_b]
    added = [n for n in names_b if n not in set_a]
    rows: list[list[str]] = []
    changed_data = identical = unknown = 0
    for n in removed:
        rows.append(["-", n, "removed", " ".join(_spec(a, n))])
    for n in added:
        rows.append(["+", n, "added", " ".join(_spec(b, n))])
    common = [n for n in names_a if n in set_b]
    for n in common:
        (sha, dta), (shb, dtb) = _spec(a, n), _spec(b, n)
        if sha != shb:
            rows.append(["~", n, "shape", f"{sha} -> {shb}" + (f" ({dta} -> {dtb})" if dta != dtb else "")])
        elif dta != dtb:
            rows.append(["~", n, "dtype", f"{dta} -> {dtb}"])
        else:
            same = _same_data(a, b, n)
            if same is None:
                unknown += 1
            elif same:
                identical += 1
            else:
                changed_data += 1
    structural = len(rows)
    meta_rows = []
    for k in list(a.metadata) + [k for k in b.metadata if k not in a.metadata]:
        va, vb = a.metadata.get(k, "(absent)"), b.metadata.get(k, "(absent)")
        if va != vb:
            meta_rows.append(["", k, _compact(va, 40), "->", _compact(vb, 40)])
    if args.json:
        _print_json({
            "a": f"{a_t.url}@{a.step}", "b": f"{b_t.url}@{b.step}",
            "removed": {n: dict(zip(("shape", "dtype"), _spec(a, n), strict=True)) for n in removed},
            "added": {n: dict(zip(("shape", "dtype"), _spec(b, n), strict=True)) for n in added},
            "changed": [{"name": r[1], "kind": r[2], "change": r[3]} for r in rows if r[0] == "~"],
            "same_spec": {"identical_data": identical, "different_data": changed_data, "unknown": unknown},
            "metadata": {r[1]: [r[2], r[4]] for r in meta_rows},
        })
        return EXIT_PROBLEMS if structural else EXIT_OK
    print(f"--- {a_t.url}@{a.step}  ({len(names_a)} entries)")
    print(f"+++ {b_t.url}@{b.step}  ({len(names_b)} entries)")
    if rows:
        print(format_table(rows, "<<<<"))
    else:
        print("same tensor names, shapes and dtypes")
    same_spec = len(common) - sum(1 for r in rows if r[0] == "~")
    detail = f"{identical} identical, {changed_data} with different values"
    if unknown:
        detail += f", {unknown} not comparable by checksum (different chunking)"
    print(f"{same_spec} entr{'y' if same_spec == 1 else 'ies'} with the same shape and dtype: {detail}")
    if meta_rows:
        print("metadata changes:")
        print(format_table(meta_rows, "<<<<<"))
    return EXIT_PROBLEMS if structural else EXIT_OK


# ---------------------------------------------------------------------------------------------
# cp
# ---------------------------------------------------------------------------------------------


def cmd_cp(args: argparse.Namespace) -> int:
    src_t = parse_target(args.src)
    if args.all and src_t.step is not None:
        raise ValueError("give either SRC@STEP or --all, not both")
    src_options = _options(args, src_t.url, "src")
    dst_options = _options(args, args.dst, "dst")
    with _open(src_t.url, src_options, read_only=True) as src, _open(args.dst, dst_options, must_exist=False) as dst:
        if args.all:
            steps: list[int | None] = [i.step for i in src.list()]
            if not steps:
                raise NotFound(f"{src_t.url}: no committed checkpoint")
        else:
            steps = [src_t.step]
        for step in steps:
            t0 = time.perf_counter()
            m = src.manifest(step)
            # restore checks every checksum of the source; save writes under the full commit protocol.
            state = src.restore(m.step, verify=True)
            t1 = time.perf_counter()
            dst.save(m.step, state, metadata=dict(m.metadata), overwrite=args.overwrite)
            del state
            t2 = time.perf_counter()
            verified = ""
            if not args.no_verify:
                _, problems = verify_step(dst, m.step)
                if problems:
                    raise FormatError(f"{args.dst}@{m.step}: copy does not verify: {problems[0]}")
                verified = f", verify {format_seconds(time.perf_counter() - t2)}"
            print(f"copied {src_t.url}@{m.step} -> {args.dst}@{m.step}: {len(m.tensors)} tensor(s), "
                  f"{format_size(m.nbytes)} (read {format_seconds(t1 - t0)}, write {format_seconds(t2 - t1)}"
                  f"{verified})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# pin / unpin / prune / gc
# ---------------------------------------------------------------------------------------------


def _step_target(text: str) -> Target:
    target = parse_target(text)
    if target.step is None:
        raise ValueError(f"name the step: {text}@STEP")
    return target


def cmd_pin(args: argparse.Namespace) -> int:
    target = _step_target(args.target)
    with _open(target.url, _options(args, target.url)) as store:
        if args.command == "pin":
            store.pin(target.step)
        else:
            store.unpin(target.step)
        pinned = sorted(store.pinned())
    print(f"{args.command}ned step {target.step} in {target.url}; pinned now: "
          f"{', '.join(map(str, pinned)) or 'none'}")
    return EXIT_OK


def parse_duration(text: str) -> float:
    """``"90"`` (seconds), ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    body, unit = (text[:-1], text[-1]) if text and text[-1].lower() in units else (text, "s")
    try:
        value = float(body)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 3600, 30m, 12h, 7d)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a duration cannot be negative: {text!r}")
    return value * units[unit.lower()]


def _retention(args: argparse.Namespace) -> Any:
    from ckptstore import policies

    rules: list[Any] = []
    if args.keep_max is not None or args.keep_every_n_hours is not None:
        rules.append(policies.KeepMax(args.keep_max, every_n_hours=args.keep_every_n_hours))
    if args.keep_best is not None:
        if not args.metric:
            raise ValueError("--keep-best needs --metric NAME (a numeric metadata key)")
        rules.append(policies.KeepBest(args.keep_best, args.metric, args.mode))
    if args.max_age is not None:
        rules.append(policies.MaxAge(args.max_age))
    if args.keep_every_n_steps is not None:
        rules.append(policies.KeepEveryNSteps(args.keep_every_n_steps))
    if args.keep_steps:
        rules.append(policies.KeepSteps(args.keep_steps))
    if not rules:
        raise ValueError("give at least one retention rule (--keep-max, --keep-best, --max-age, "
                         "--keep-every-n-steps, --keep-steps); see ckptstore prune --help")
    return rules[0] if len(rules) == 1 else policies.any_of(*rules)


def cmd_prune(args: argparse.Namespace) -> int:
    policy = _retention(args)
    with _open(args.url, _options(args, args.url)) as store:
        before = {i.step: i for i in store.list()}
        result = store.prune(dry_run=args.dry_run, retention=policy)
        pinned = store.pinned()
        latest = store.latest()
    verb = "would delete" if result.dry_run else "deleted"
    rows = [["STEP", "SAVED (UTC)", "SIZE", "DECISION"]]
    deleted = set(result.deleted)
    for step in sorted(set(result.kept) | deleted):
        info = before.get(step)
        why = verb if step in deleted else "keep" + (
            " (LATEST)" if latest and latest.step == step else " (pinned)" if step in pinned else "")
        rows.append([str(step), _when(info.time) if info else "?", format_size(info.nbytes) if info else "?", why])
    if len(rows) > 1:
        print(format_table(rows, "><><"))
    freed = sum(before[s].nbytes for s in deleted if s in before)
    print(f"{'dry run: ' if result.dry_run else ''}{verb} {len(deleted)} checkpoint(s) ({format_size(freed)}), "
          f"kept {len(result.kept)}" + (f"; removed {len(result.garbage)} garbage object(s)" if result.garbage else ""))
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    with _open(args.url, _options(args, args.url)) as store:
        garbage = store.gc(grace_seconds=args.grace, dry_run=args.dry_run)
    for key in garbage:
        print(("would remove " if args.dry_run else "removed ") + key)
    print(f"{'dry run: ' if args.dry_run else ''}{len(garbage)} garbage object(s) "
          f"{'found' if args.dry_run else 'removed'} (uncommitted attempts and temp files older than "
          f"{f'{args.grace:g} s' if args.grace is not None else 'the grace period'})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------

DESCRIPTION = """\
ckptstore: benchmark checkpoint storage, and inspect, verify, copy and prune checkpoints on any backend.

URLs: a local path, file://, s3://bucket/prefix, gs://bucket/prefix, memory:// (this process only) or
any fsspec URL. URL@STEP names one checkpoint; URL alone (or URL@latest) the one LATEST names.
Backend options (endpoint, credentials) go in --option KEY=VALUE, repeated; they apply to every
remote URL of the command (cp also has --src-option/--dst-option). AWS_* and similar environment
variables work as they do for the underlying client."""

EXAMPLES = {
    "bench": """\
examples:
  ckptstore bench                                  1 GiB "mixed" model in a fresh temp dir, 3 repeats
  ckptstore bench /mnt/nvme/scratch --size 4GiB --preset few-large --workers 4
  ckptstore bench --size 64MiB --repeat 5 --json > bench.json
  ckptstore bench --plot bench.png
  ckptstore bench s3://bucket/bench --option endpoint_url=http://127.0.0.1:9000 \\
      --option key=KEY --option secret=SECRET --size 256MiB
  ckptstore bench gs://bucket/bench --baseline fsspec   raw = the plain gcsfs client (pipe/cat)

Measures durable save, cold restore (local disk: page cache dropped with posix_fadvise) and warm
restore, each next to a raw baseline (plain writes/reads of the same bytes, same storage, same
concurrency) run interleaved in the same repetition; prints median/min/max, MB/s, peak extra memory and
the ckptstore/raw throughput ratio.""",
    "ls": """\
examples:
  ckptstore ls /tmp/model_dir
  ckptstore ls s3://bucket/models/iris --option endpoint_url=http://127.0.0.1:9000
  ckptstore ls gs://bucket/run7 --json""",
    "show": """\
examples:
  ckptstore show /tmp/model_dir               the latest checkpoint
  ckptstore show /tmp/model_dir@200 --sort size
  ckptstore show s3://bucket/run7@1000 --json""",
    "verify": """\
examples:
  ckptstore verify /tmp/model_dir             the latest checkpoint
  ckptstore verify /tmp/model_dir@200
  ckptstore verify s3://bucket/run7 --all     every committed checkpoint, and LATEST

Reads every byte and checks every checksum; exits 1 naming each damaged tensor, missing or truncated
shard and unreadable manifest or LATEST.""",
    "diff": """\
examples:
  ckptstore diff /tmp/model_dir@100 /tmp/model_dir@200
  ckptstore diff /tmp/model_dir@100 @200      same model_dir
  ckptstore diff s3://bucket/run7 /tmp/new_model_dir

Lists removed (-) and added (+) tensors and shape/dtype changes (~): what a restore into the changed
model would reject. Tensors with the same spec are compared by their chunk checksums. Exits 1 when
names, shapes or dtypes differ.""",
    "pin": """\
examples:
  ckptstore pin /tmp/model_dir@200            keep step 200 whatever the retention policy says
  ckptstore pin s3://bucket/run7@1000 --option endpoint_url=http://127.0.0.1:9000""",
    "unpin": """\
examples:
  ckptstore unpin /tmp/model_dir@200          let retention consider step 200 again""",
    "prune": """\
examples:
  ckptstore prune /tmp/model_dir --keep-max 5 --dry-run      what would go
  ckptstore prune /tmp/model_dir --keep-max 5 --keep-every-n-hours 2
  ckptstore prune s3://bucket/run7 --keep-best 3 --metric loss --mode min --keep-max 2
  ckptstore prune gs://bucket/run7 --max-age 7d --keep-max 3

Rules combine as a union (a checkpoint any rule keeps stays). Never deleted: the step LATEST names,
pinned steps, and steps the every-n-hours schedule preserved. Deletes remove the manifest first, so an
interrupted prune leaves no half checkpoint; garbage collection runs afterwards.""",
    "gc": """\
examples:
  ckptstore gc /tmp/model_dir --dry-run
  ckptstore gc s3://bucket/run7 --grace 2h

Removes uncommitted save attempts and temp files older than the grace period (default: the store's,
1 hour); a writer still saving is never touched if the grace exceeds its longest save.""",
    "cp": """\
examples:
  ckptstore cp /tmp/model_dir s3://bucket/run7 --option endpoint_url=http://127.0.0.1:9000
  ckptstore cp s3://bucket/run7@200 gs://other/run7 --dst-option token=anon
  ckptstore cp /tmp/model_dir /mnt/backup/model_dir --all

Reads the source checkpoint (checking every checksum), commits it at the destination with the normal
protocol (same step and metadata; shards first, manifest last, LATEST advanced), then reads the copy
back and checks it (--no-verify skips that).""",
}


def _subparser(sub: Any, name: str, help: str, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, epilog=EXAMPLES[name] + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common],
    )


def build_parser() -> argparse.ArgumentParser:
    # Common options are accepted before or after the command (SUPPRESS keeps a later default from
    # overwriting an earlier value).
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("-o", "--option", action="append", type=parse_option, metavar="KEY=VALUE",
                        help="backend option for remote URLs, repeatable (endpoint_url, key, secret, "
                             "token ...); true/false/none and integers are converted")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    common.add_argument("-v", "--verbose", action="store_true", help="show ckptstore's info logging")

    parser = argparse.ArgumentParser(
        prog="ckptstore", description=DESCRIPTION, parents=[common],
        epilog="run 'ckptstore COMMAND --help' for each command's options and examples\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ckptstore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _subparser(sub, "bench", "measure save/restore throughput against a raw baseline", common)
    p.add_argument("url", nargs="?",
                   help="where to write: a fresh ckptstore-bench-<time>-<id> folder is made under it "
                        "(default: a fresh temporary directory)")
    p.add_argument("--size", type=_size, default=1 << 30, help="model size (default 1GiB; e.g. 64MiB, 500MB)")
    p.add_argument("--preset", choices=bench.PRESETS, default="mixed",
                   help="tensor mix: few-large (64 MiB each), many-small (~256 KiB), mixed (94%% in 64 MiB "
                        "tensors + 200 small; default)")
    p.add_argument("--tensors", type=_positive, help="override the preset's tensor count")
    p.add_argument("--shard-size", type=_size, default=bench.DEFAULT_MAX_SHARD_SIZE,
                   help="maximum shard size (default 1GiB)")
    p.add_argument("--workers", type=_positive, help="parallel storage calls (default: the backend's)")
    p.add_argument("--repeat", type=_positive, default=3, help="repetitions (default 3)")
    p.add_argument("--cold", choices=bench.COLD_METHODS, default="auto",
                   help="how to drop the page cache before cold restores: auto (posix_fadvise), fadvise, "
                        "drop-caches (root; affects the whole machine), off")
    p.add_argument("--no-verify", action="store_true", help="restore without checking checksums")
    p.add_argument("--baseline", choices=bench.BASELINES, default="backend",
                   help="raw baseline on a non-local URL: backend (ckptstore's own backend calls without "
                        "checksums or commit; default) or fsspec (the plain s3fs/gcsfs/... client)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw a chart (needs pip install 'ckptstore[plot]')")
    p.add_argument("--keep", action="store_true", help="keep the written files")
    p.add_argument("--quiet", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic model")
    p.set_defaults(func=cmd_bench)

    p = _subparser(sub, "ls", "list the committed checkpoints of a model_dir", common)
    p.add_argument("url", help="model_dir path or URL")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ls)

    p = _subparser(sub, "show", "show one checkpoint's tensors and metadata", common)
    p.add_argument("target", metavar="URL[@STEP]")
    p.add_argument("--sort", choices=("order", "name", "size"), default="order",
                   help="tensor order (default: as saved)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = _subparser(sub, "verify", "read a checkpoint and check every checksum", common)
    p.add_argument("target", metavar="URL[@STEP]")
    p.add_argument("--all", action="store_true", help="every committed checkpoint, and LATEST")
    p.set_defaults(func=cmd_verify)

    p = _subparser(sub, "diff", "compare the tensors of two checkpoints", common)
    p.add_argument("a", metavar="URL@A")
    p.add_argument("b", metavar="URL@B")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_diff)

    p = _subparser(sub, "cp", "copy checkpoints between any two backends, verified", common)
    p.add_argument("src", metavar="SRC[@STEP]")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--all", action="store_true", help="copy every committed checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a step already committed at DST")
    p.add_argument("--no-verify", action="store_true", help="do not read the copy back to check it")
    p.add_argument("--src-option", action="append", type=parse_option, metavar="KEY=VALUE",
                   help="backend option for SRC only (overrides --option)")
    p.add_argument("--dst-option", action="append", type=parse_option, metavar="KEY=VALUE",
                   help="backend option for DST only (overrides --option)")
    p.set_defaults(func=cmd_cp)

    for name, help_text in (("pin", "protect one checkpoint from retention"),
                            ("unpin", "let retention consider a pinned checkpoint again")):
        p = _subparser(sub, name, help_text, common)
        p.add_argument("target", metavar="URL@STEP")
        p.set_defaults(func=cmd_pin)

    p = _subparser(sub, "prune", "delete checkpoints a retention policy does not keep", common)
    p.add_argument("url", help="model_dir path or URL")
    p.add_argument("--keep-max", type=_positive, metavar="N", help="keep the N newest")
    p.add_argument("--keep-every-n-hours", type=float, metavar="H",
                   help="with --keep-max: also keep one checkpoint every H hours (tf.train.CheckpointManager)")
    p.add_argument("--keep-best", type=_positive, metavar="N", help="keep the N best by --metric")
    p.add_argument("--metric", help="numeric metadata key for --keep-best")
    p.add_argument("--mode", choices=("min", "max"), default="min", help="lower (min) or higher (max) is better")
    p.add_argument("--max-age", type=parse_duration, metavar="AGE", help="keep checkpoints younger than AGE (7d, 12h)")
    p.add_argument("--keep-every-n-steps", type=_positive, metavar="N", help="keep steps that are multiples of N")
    p.add_argument("--keep-steps", type=int, nargs="+", metavar="STEP", help="keep these steps")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    p.set_defaults(func=cmd_prune)

    p = _subparser(sub, "gc", "remove leftovers of interrupted saves", common)
    p.add_argument("url", help="model_dir path or URL")
    p.add_argument("--grace", type=parse_duration, metavar="AGE",
                   help="only objects older than this (default: 1h, the store's gc_grace_seconds)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.set_defaults(func=cmd_gc)
    return parser


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"ckptstore: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logging(debug: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine() if not debug else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    log.propagate = False


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    lines = text.splitlines()
    return lines[0] if len(lines) == 1 else f"{lines[0]} (+{len(lines) - 1} more lines; --debug shows all)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ckptstore`` command line; returns the exit code (see ``EXIT_CODES``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    _configure_logging(debug, getattr(args, "verbose", False))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("ckptstore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (ckptstore ls | head); silence Python's complaint at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (CkptStoreError, OSError, ValueError, TypeError, ImportError) as e:
        if debug:
            traceback.print_exc()
        print(f"ckptstore: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug: still one line, but say so
        if debug:
            traceback.print_exc()
        print(f"ckptstore: internal error: {type(e).__name__}: {_one_line(e)} (--debug shows the traceback)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
