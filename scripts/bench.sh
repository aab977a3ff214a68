#!/usr/bin/env bash
# Benchmark ckptstore on this machine: durable save, cold and warm restore of a synthetic model, each
# next to a raw baseline (plain fsync'd writes, writeback started every 8 MiB / page-aligned reads of the same bytes) in the same run.
#
# Usage: scripts/bench.sh [ckptstore bench arguments ...]
#   scripts/bench.sh                                  1 GiB "mixed" model in a fresh temp dir, 3 repeats
#   scripts/bench.sh --size 256MiB --repeat 5 --json
#   scripts/bench.sh /mnt/nvme/scratch --preset few-large --plot bench.png
#   scripts/bench.sh s3://bucket/bench --option endpoint_url=http://127.0.0.1:9000 --option key=K --option secret=S
#
# Does its own set-up on a fresh machine: creates the virtualenv (default .venv beside this repo, or
# $CKPTSTORE_VENV) if missing and installs ckptstore into it (with the progress-bar extra; the plot extra
# when --plot is given; the s3/gcs extras for s3:// or gs:// URLs). Needs python3 >= 3.10 with venv.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CKPTSTORE_VENV:-$repo/.venv}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"

extras="progress"
for arg in "$@"; do
    case "$arg" in
        --plot|--plot=*) extras="$extras,plot" ;;
        s3://*|s3a://*) extras="$extras,s3" ;;
        gs://*|gcs://*) extras="$extras,gcs" ;;
    esac
done

# Install (or complete) the package only when something is missing: a re-run starts at once.
need_install=0
"$py" -c "import ckptstore.cli" 2>/dev/null || need_install=1
case ",$extras," in *,plot,*) "$py" -c "import matplotlib" 2>/dev/null || need_install=1 ;; esac
case ",$extras," in *,s3,*) "$py" -c "import s3fs, boto3" 2>/dev/null || need_install=1 ;; esac
case ",$extras," in *,gcs,*) "$py" -c "import gcsfs" 2>/dev/null || need_install=1 ;; esac
"$py" -c "import tqdm" 2>/dev/null || need_install=1
if [ "$need_install" = 1 ]; then
    echo "bench.sh: installing ckptstore[$extras] into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check -e "$repo[$extras]"
fi

exec "$py" -m ckptstore bench "$@"
