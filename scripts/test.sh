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

echo "== core suite"
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@" || status=1

for plugin_script in scripts/test-tensorflow.sh scripts/test-torch.sh; do
    if [ -f "$plugin_script" ]; then
        echo "== $plugin_script"
        bash "$plugin_script" || status=1
    fi
done

exit $status
