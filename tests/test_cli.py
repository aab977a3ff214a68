"""The ``ckptstore`` command line, driven as a user drives it: a subprocess (``python -m ckptstore``).

Checkpoints are made with the library in the test process on local disk (``memory://`` does not cross
processes) and, in one round trip, on moto's S3. No test asserts anything about timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptstore import CheckpointStore
from ckptstore.storage import open_storage

COMMANDS = ["bench", "ls", "show", "verify", "diff", "cp", "pin", "unpin", "prune", "gc"]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-m", "ckptstore", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ckptstore: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def state_v1(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "dnn": {
            "hiddenlayer_0": {"kernel": rng.random((4, 10), dtype=np.float32), "bias": np.zeros(10, np.float32)},
            "hiddenlayer_1": {"kernel": rng.random((10, 10), dtype=np.float32), "bias": np.ones(10, np.float32)},
        },
        "big": rng.random(300_000, dtype=np.float32),  # > 1 MiB: read on the large-chunk path
        "global_step": 100,
    }


def state_v2(rng: np.random.Generator) -> dict[str, Any]:
    s = state_v1(rng)
    s["dnn"]["hiddenlayer_0"]["kernel"] = rng.random((4, 20), dtype=np.float32)  # shape change
    s["dnn"]["hiddenlayer_1"]["bias"] = np.ones(10, np.float16)  # dtype change
    del s["dnn"]["hiddenlayer_1"]["kernel"]  # removed
    s["dnn"]["logits"] = {"kernel": np.ones((20, 3))}  # added
    s["global_step"] = 200
    return s


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A local model_dir with steps 100 and 200 (200 is a changed model)."""
    md = tmp_path / "md"
    rng = np.random.default_rng(0)
    with CheckpointStore(md) as store:
        store.save(100, state_v1(rng), metadata={"loss": 0.5})
        store.save(200, state_v2(rng), metadata={"loss": 0.31, "note": "after resize"})
    return md


# ---------------------------------------------------------------------------------------------
# help and errors
# ---------------------------------------------------------------------------------------------


def test_top_level_help_names_every_command_and_exit_codes() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert cmd in r.stdout
    assert "exit codes:" in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    r = cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "examples:" in r.stdout
    assert f"ckptstore {command} " in r.stdout
    assert "exit codes:" in r.stdout


def test_missing_directory_is_one_line_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    r = cli("ls", str(missing))
    assert r.returncode == 3
    assert "no such directory" in one_line_error(r)
    assert not missing.exists()


def test_missing_step_is_one_line_error(saved: Path) -> None:
    r = cli("show", f"{saved}@999")
    assert r.returncode == 3
    assert "999" in one_line_error(r)


def test_debug_shows_the_traceback(saved: Path) -> None:
    r = cli("show", f"{saved}@999", "--debug")
    assert r.returncode == 3
    assert "Traceback" in r.stderr


def test_bad_usage_exits_2() -> None:
    r = cli("bench", "--size", "lots")
    assert r.returncode == 2
    assert "not a size" in r.stderr


# ---------------------------------------------------------------------------------------------
# ls / show
# ---------------------------------------------------------------------------------------------


def test_ls_lists_steps_with_sizes_and_latest(saved: Path) -> None:
    r = cli("ls", str(saved))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["STEP", "SAVED"]
    row100 = next(line for line in lines if line.lstrip().startswith("100 "))
    row200 = next(line for line in lines if line.lstrip().startswith("200 "))
    assert "LATEST" not in row100 and "LATEST" in row200
    assert "1.16 MiB" in row100 and "loss=0.5" in row100
    assert "2 checkpoint(s)" in lines[-1]
    # Columns are aligned: the headers start where their values start.
    assert row100[lines[0].index("TENSORS")] == "6"


def test_ls_json(saved: Path) -> None:
    r = cli("ls", str(saved), "--json")
    doc = json.loads(r.stdout)
    assert [d["step"] for d in doc] == [100, 200]
    assert [d["latest"] for d in doc] == [False, True]
    assert doc[0]["num_tensors"] == 6 and doc[0]["metadata"] == {"loss": 0.5}
    assert doc[0]["pinned"] is False


def test_inspection_commands_do_not_write(saved: Path) -> None:
    """ls/show/verify must work with read-only credentials: not even a missing LATEST is repaired."""
    (saved / "LATEST").unlink()
    before = sorted((p.relative_to(saved), p.stat().st_mtime_ns) for p in saved.rglob("*"))
    for args in (["ls", str(saved)], ["show", str(saved)], ["verify", str(saved), "--all"]):
        r = cli(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert "200" in cli("ls", str(saved)).stdout
    assert sorted((p.relative_to(saved), p.stat().st_mtime_ns) for p in saved.rglob("*")) == before


def test_ls_empty_dir(tmp_path: Path) -> None:
    r = cli("ls", str(tmp_path))
    assert r.returncode == 0
    assert "no committed checkpoints" in r.stderr


def test_show_lists_tensors_and_metadata(saved: Path) -> None:
    r = cli("show", f"{saved}@100")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"{saved}@100" in out and "(LATEST)" not in out
    blocks = len(CheckpointStore(saved, read_only=True).manifest(100).tensors.blocks)
    assert blocks >= 1  # its small tensors are neighbours: checked in blocks too
    assert "loss: 0.5" in out and f"(format 3.1, xxh3-64 checksums; {blocks} block checksum(s))" in out
    row = next(line for line in out.splitlines() if line.startswith("dnn/hiddenlayer_0/kernel"))
    assert row.split() == ["dnn/hiddenlayer_0/kernel", "float32", "[4,", "10]", "160", "B"]
    assert any(line.startswith("global_step") and "scalar" in line for line in out.splitlines())
    latest = cli("show", str(saved))
    assert "@200  (LATEST)" in latest.stdout and "note: after resize" in latest.stdout


def test_show_json_sorted_by_size(saved: Path) -> None:
    doc = json.loads(cli("show", f"{saved}@100", "--json", "--sort", "size").stdout)
    assert list(doc["tensors"])[0] == "big"
    assert doc["tensors"]["big"] == {"dtype": "float32", "shape": [300000], "nbytes": 1_200_000, "chunks": 1}
    assert doc["scalars"] == {"global_step": 100}
    assert (doc["format"], doc["checksum"]) == ("3.1", "xxh3-64")
    assert doc["blocks"] == len(CheckpointStore(saved, read_only=True).manifest(100).tensors.blocks) >= 1


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------


def test_verify_ok(saved: Path) -> None:
    r = cli("verify", str(saved), "--all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok    step") == 2


def _flip_byte(md: Path, step: int, tensor: str, at: int) -> None:
    with CheckpointStore(md) as store:
        chunk = store.manifest(step).tensors[tensor].chunks[0]
    shard = md / f"step-{step:012d}" / chunk.shard
    with open(shard, "r+b") as f:
        f.seek(chunk.offset + at)
        b = f.read(1)
        f.seek(chunk.offset + at)
        f.write(bytes([b[0] ^ 0x01]))


@pytest.mark.parametrize("tensor", ["big", "dnn/hiddenlayer_1/bias"])
def test_verify_detects_a_flipped_byte_and_names_the_tensor(saved: Path, tensor: str) -> None:
    _flip_byte(saved, 100, tensor, 7)
    r = cli("verify", f"{saved}@100")
    assert r.returncode == 1
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, r.stdout
    assert f"tensor {tensor}" in fails[0] and "fail their xxh3-64 check" in fails[0]
    assert "problem(s) found" in r.stderr
    # The other checkpoint is still fine, and --all reports exactly the damaged one.
    assert cli("verify", f"{saved}@200").returncode == 0
    r_all = cli("verify", str(saved), "--all")
    assert r_all.returncode == 1
    assert "ok    step 200" in r_all.stdout and "FAIL  step 100" in r_all.stdout


def test_verify_reports_every_damaged_tensor(saved: Path) -> None:
    _flip_byte(saved, 100, "dnn/hiddenlayer_0/kernel", 0)
    _flip_byte(saved, 100, "dnn/hiddenlayer_1/kernel", 3)
    r = cli("verify", f"{saved}@100")
    assert r.returncode == 1
    assert "tensor dnn/hiddenlayer_0/kernel" in r.stdout and "tensor dnn/hiddenlayer_1/kernel" in r.stdout


def test_verify_reports_a_missing_shard(saved: Path) -> None:
    shard = next((saved / "step-000000000100").glob("attempt-*/shard-*.bin"))
    shard.unlink()
    r = cli("verify", str(saved), "--all")
    assert r.returncode == 1
    assert "missing" in r.stdout and shard.name in r.stdout


def test_verify_reports_a_damaged_latest(saved: Path) -> None:
    (saved / "LATEST").write_bytes(b"\x00garbage")
    r = cli("verify", str(saved), "--all")
    assert r.returncode == 1
    assert "FAIL  LATEST" in r.stdout


# ---------------------------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------------------------


def test_diff_lists_added_removed_and_changed(saved: Path) -> None:
    r = cli("diff", f"{saved}@100", "@200")
    assert r.returncode == 1, r.stderr
    rows = {tuple(line.split()[:3]) for line in r.stdout.splitlines()}
    assert ("-", "dnn/hiddenlayer_1/kernel", "removed") in rows
    assert ("+", "dnn/logits/kernel", "added") in rows
    assert ("~", "dnn/hiddenlayer_0/kernel", "shape") in rows
    assert ("~", "dnn/hiddenlayer_1/bias", "dtype") in rows
    assert "[4, 10] -> [4, 20]" in r.stdout and "float32 -> float16" in r.stdout
    assert "loss" in r.stdout and "0.31" in r.stdout  # metadata change


def test_diff_identical_exits_0_and_json(saved: Path) -> None:
    r = cli("diff", f"{saved}@100", f"{saved}@100")
    assert r.returncode == 0
    assert "same tensor names, shapes and dtypes" in r.stdout
    doc = json.loads(cli("diff", f"{saved}@100", f"{saved}@200", "--json").stdout)
    assert set(doc["removed"]) == {"dnn/hiddenlayer_1/kernel"}
    assert set(doc["added"]) == {"dnn/logits/kernel"}
    assert {c["name"]: c["kind"] for c in doc["changed"]} == {
        "dnn/hiddenlayer_0/kernel": "shape", "dnn/hiddenlayer_1/bias": "dtype"}
    # hiddenlayer_0/bias (zeros) has the same bytes in both; big (new random values) and global_step differ.
    assert doc["same_spec"] == {"identical_data": 1, "different_data": 2, "unknown": 0}


# ---------------------------------------------------------------------------------------------
# cp
# ---------------------------------------------------------------------------------------------


def _assert_same_checkpoints(a: str, b: str, b_options: dict[str, Any] | None = None) -> None:
    with CheckpointStore(a) as sa, CheckpointStore(b, storage_options=b_options) as sb:
        assert [i.step for i in sa.list()] == [i.step for i in sb.list()]
        assert [dict(i.metadata) for i in sa.list()] == [dict(i.metadata) for i in sb.list()]
        assert sa.latest().step == sb.latest().step
        for info in sa.list():
            x, y = sa.restore(info.step), sb.restore(info.step)
            assert x.keys() == y.keys()
            for name in x:
                if isinstance(x[name], np.ndarray):
                    assert x[name].dtype == y[name].dtype
                    np.testing.assert_array_equal(x[name], y[name])
                else:
                    assert x[name] == y[name]


def test_cp_round_trip(saved: Path, tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    r = cli("cp", str(saved), str(dst), "--all")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("copied") == 2 and "verify" in r.stdout
    _assert_same_checkpoints(str(saved), str(dst))
    again = cli("cp", f"{saved}@100", str(dst))
    assert again.returncode == 3
    assert "already committed" in one_line_error(again)
    assert cli("cp", f"{saved}@100", str(dst), "--overwrite").returncode == 0


def test_cp_refuses_a_damaged_source(saved: Path, tmp_path: Path) -> None:
    _flip_byte(saved, 200, "big", 1)
    r = cli("cp", f"{saved}@200", str(tmp_path / "copy"))
    assert r.returncode == 3
    assert "fail their xxh3-64 check" in one_line_error(r)
    assert not (tmp_path / "copy" / "step-000000000200" / "manifest.msgpack").exists()


def test_s3_round_trip(saved: Path, tmp_path: Path, s3_moto: Any) -> None:
    url = f"s3://{s3_moto.bucket}/cli-{os.getpid()}-{tmp_path.name}"
    opts = [f"--option={k}={v}" for k, v in s3_moto.storage_options.items()]
    assert cli("cp", str(saved), url, "--all", *opts).returncode == 0
    r = cli("ls", url, *opts)
    assert r.returncode == 0 and "LATEST" in r.stdout, r.stderr
    assert cli("verify", url, "--all", *opts).returncode == 0
    assert cli("diff", f"{saved}@200", f"{url}@200", *opts).returncode == 0
    back = tmp_path / "back"
    assert cli("cp", url, str(back), "--all", *opts).returncode == 0
    _assert_same_checkpoints(str(saved), str(back))
    _assert_same_checkpoints(str(saved), url, s3_moto.storage_options)
    bench = cli("bench", url + "/bench", "--size", "512KiB", "--repeat", "1", "--json", *opts)
    assert bench.returncode == 0, bench.stderr
    doc = json.loads(bench.stdout)
    assert doc["not_measured"] == ["restore_cold"] and doc["cold_cache"]["method"] is None
    assert s3_moto.storage_options["secret"] not in bench.stdout  # option names only, never credentials


@pytest.mark.parametrize("server_fixture", ["s3_moto", "gcs_fake"])
def test_bench_against_the_plain_fsspec_client(request: pytest.FixtureRequest, server_fixture: str) -> None:
    """``--baseline fsspec``: raw = s3fs/gcsfs ``pipe``/``cat`` of the same bytes (issue 3's comparison)."""
    server = request.getfixturevalue(server_fixture)
    scheme = "s3" if server_fixture.startswith("s3") else "gs"
    url = f"{scheme}://{server.bucket}/bench-fsspec-{os.getpid()}-{server_fixture}"
    opts = [f"--option={k}={v}" for k, v in server.storage_options.items()]
    r = cli("bench", url, "--size", "3MiB", "--tensors", "3", "--repeat", "1", "--baseline", "fsspec",
            "--keep", "--json", *opts)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["config"]["baseline"] == "fsspec"
    for op in ("save", "restore_warm"):
        assert doc["results"][op]["raw"]["median_s"] > 0
    with open_storage(doc["url"], **server.storage_options) as kept:  # what the fsspec client wrote
        raw_files = sorted(o.key for o in kept.list("r0/raw/"))
    assert raw_files == [f"r0/raw/file-{i:05d}.bin" for i in range(doc["model"]["shards"])], raw_files
    human = cli("bench", url, "--size", "1MiB", "--repeat", "1", "--baseline", "fsspec", *opts)
    assert human.returncode == 0 and "plain fsspec client" in human.stdout, human.stderr


# ---------------------------------------------------------------------------------------------
# pin / unpin / prune / gc
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def six_steps(tmp_path: Path) -> Path:
    md = tmp_path / "six"
    with CheckpointStore(md) as store:
        for step in range(100, 700, 100):
            store.save(step, {"w": np.full(1000, step, np.float32)}, metadata={"loss": 1 / step})
    return md


def _steps(md: Path) -> list[int]:
    return [d["step"] for d in json.loads(cli("ls", str(md), "--json").stdout)]


def test_pin_prune_unpin(six_steps: Path) -> None:
    assert cli("pin", f"{six_steps}@200").returncode == 0
    ls = cli("ls", str(six_steps)).stdout
    assert "pinned" in next(line for line in ls.splitlines() if line.lstrip().startswith("200 "))
    dry = cli("prune", str(six_steps), "--keep-max", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 3 checkpoint(s)" in dry.stdout and "keep (pinned)" in dry.stdout
    assert _steps(six_steps) == [100, 200, 300, 400, 500, 600]  # a dry run deletes nothing
    real = cli("prune", str(six_steps), "--keep-max", "2")
    assert real.returncode == 0 and "deleted 3 checkpoint(s)" in real.stdout
    assert _steps(six_steps) == [200, 500, 600]
    assert cli("unpin", f"{six_steps}@200").returncode == 0
    assert cli("prune", str(six_steps), "--keep-max", "2").returncode == 0
    assert _steps(six_steps) == [500, 600]
    assert cli("verify", str(six_steps), "--all").returncode == 0


def test_prune_keep_best_union(six_steps: Path) -> None:
    r = cli("prune", str(six_steps), "--keep-best", "1", "--metric", "loss", "--mode", "max", "--keep-max", "1")
    assert r.returncode == 0, r.stderr
    assert _steps(six_steps) == [100, 600]  # the highest loss, and the newest


def test_prune_needs_a_rule_and_pin_needs_a_step(six_steps: Path) -> None:
    r = cli("prune", str(six_steps))
    assert r.returncode == 3 and "retention rule" in one_line_error(r)
    r = cli("pin", str(six_steps))
    assert r.returncode == 3 and "@STEP" in one_line_error(r)
    r = cli("pin", f"{six_steps}@150")
    assert r.returncode == 3 and "150" in one_line_error(r)


def test_gc_removes_an_abandoned_attempt(six_steps: Path) -> None:
    dead = six_steps / "step-000000000600" / "attempt-0123456789abcdef"
    dead.mkdir()
    (dead / "shard-00000.bin").write_bytes(b"x" * 10)
    assert "0 garbage" in cli("gc", str(six_steps)).stdout  # younger than the default 1 h grace
    dry = cli("gc", str(six_steps), "--grace", "0", "--dry-run")
    assert "would remove step-000000000600/attempt-0123456789abcdef/shard-00000.bin" in dry.stdout
    assert dead.exists()
    assert cli("gc", str(six_steps), "--grace", "0").returncode == 0
    assert not dead.exists()
    assert cli("verify", str(six_steps), "--all").returncode == 0


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["few-large", "many-small", "mixed"])
def test_bench_json_schema(preset: str) -> None:
    r = cli("bench", "--size", "2MiB", "--preset", preset, "--repeat", "2", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "ckptstore-bench/1"
    assert doc["config"]["preset"] == preset and doc["config"]["repeat"] == 2
    assert doc["model"]["nbytes"] == pytest.approx(2 << 20, rel=0.01)
    assert doc["model"]["num_tensors"] >= 1
    measured = set(doc["results"])
    assert measured | set(doc["not_measured"]) == {"save", "restore_cold", "restore_warm", "save_blocked"}
    assert {"save", "restore_warm", "save_blocked"} <= measured
    for op in measured:
        res = doc["results"][op]
        assert res["ratio"] > 0
        for impl in ("ckptstore", "raw"):
            s = res[impl]
            assert len(s["seconds"]) == 2
            assert s["min_s"] <= s["median_s"] <= s["max_s"]
            assert s["throughput_mb_s"] > 0 and s["peak_extra_rss_bytes"] >= 0
    assert doc["environment"]["nproc"] >= 1
    # The temporary directory was announced on stderr (stdout is pure JSON) and removed.
    where = r.stderr.split("benchmarking in ", 1)[1].split(" (", 1)[0]
    assert not Path(where).exists()


def test_bench_human_report_and_keep(tmp_path: Path) -> None:
    target = tmp_path / "b"
    r = cli("bench", str(target), "--size", "1MiB", "--repeat", "1", "--keep", "--tensors", "8")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for label in ("durable save", "warm restore", "cold restore", "background save, time blocked", "ckptstore/raw",
                  "MB/s", "peak extra RSS"):
        assert label in out
    assert "in 8 tensors" in out
    assert "\r" not in r.stderr and "it/s" not in r.stderr  # no progress bar without a terminal
    (run,) = target.glob("ckptstore-bench-*")
    assert (run / "r0" / "ckptstore" / "LATEST").exists() and (run / "r0" / "raw").is_dir()
    assert cli("verify", str(run / "r0" / "ckptstore")).returncode == 0
    # A second run in the same place makes its own folder, and removes it.
    r2 = cli("bench", str(target), "--size", "64KiB", "--repeat", "1", "--cold", "off", "--workers", "1")
    assert r2.returncode == 0, r2.stderr
    cold_row = next(line for line in r2.stdout.splitlines() if line.startswith("cold restore"))
    assert cold_row.split()[2:] == ["-", "n/a"]
    assert list(target.glob("ckptstore-bench-*")) == [run]


def test_bench_memory_url() -> None:
    r = cli("bench", "memory://bench", "--size", "256KiB", "--repeat", "1", "--json")
    doc = json.loads(r.stdout)
    assert doc["not_measured"] == ["restore_cold"]
    assert "memory://" in doc["cold_cache"]["note"]


def test_bench_plot_without_matplotlib_is_a_clear_error(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from ckptstore.cli import main\n"
        f"sys.exit(main(['bench', '--size', '64KiB', '--repeat', '1', '--plot', {str(tmp_path / 'p.png')!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert "pip install 'ckptstore[plot]'" in one_line_error(r)
    assert "benchmarking" not in r.stdout  # failed before doing the work


def test_bench_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    r = cli("bench", "--size", "256KiB", "--repeat", "2", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
