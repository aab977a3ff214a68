#!/usr/bin/env bash
# Run every ckptstore test on a fresh machine: install what is needed, then the core suite (every
# backend: memory, local disk, S3 on moto and SeaweedFS, GCS on fake-gcs-server — the servers are
# started on 127.0.0.1 by the test fixtures), then each plugin's suite in its own environment.
#
# Usage: scripts/test.sh [PYTEST_ARGS...]   (arguments go to the core suite, e.g. -k "local or memory")
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
status=0

bash scripts/install-test-deps.sh "$repo/.venv" || exit 1

# The plugin environments (TensorFlow x2, torch: mostly download and unpack) are built while the core
# suite runs, so the wait for them overlaps with tests instead of adding to it.
logs="$(mktemp -d)"
# One after the other: two pip runs building the same editable checkout at once could collide.
( bash scripts/test-tensorflow.sh --install-only > "$logs/tf-install.log" 2>&1; echo $? > "$logs/tf.rc"
  bash scripts/test-torch.sh --install-only > "$logs/torch-install.log" 2>&1; echo $? > "$logs/torch.rc" ) &
installs=$!

echo "== lint"
.venv/bin/ruff check . || status=1

echo "== core suite"
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@" || status=1
echo "== core suite done at $SECONDS s"

wait "$installs"
for job in tf:scripts/test-tensorflow.sh torch:scripts/test-torch.sh; do
    name="${job%%:*}"; script="${job#*:}"
    if [ "$(cat "$logs/$name.rc" 2>/dev/null)" != 0 ]; then
        echo "== installing the $name environment failed:"; cat "$logs/$name-install.log"; status=1; continue
    fi
    echo "== $script"
    bash "$script" || status=1
    echo "== $script done at $SECONDS s"
done

exit $status
