#!/usr/bin/env bash
# Run the ckptstore-torch plugin tests in their own virtualenv, .venv-torch beside the repo.
#
# Usage: scripts/test-torch.sh [--install-only] [PYTEST_ARGS...]
#
# torch is pinned to 2.13.0: pip takes that CPU build from a file on this machine's disk, whereas an
# unpinned torch (asked for directly or by Lightning) would download a multi-GB CUDA build. The pin is
# passed as a constraint too, so nothing else in the one resolver run can pull another torch.
# pytorch-lightning 2.6.6 is the release the Lightning CheckpointIO is tested with.
# Idempotent: a stamp file records what was installed; pip runs again only when the requirements or
# a pyproject.toml changed, or an import fails.
set -euo pipefail
set -f  # requirement specifiers like moto[s3] are not globs

install_only=0
if [ "${1:-}" = "--install-only" ]; then install_only=1; shift; fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
plugin="$repo/plugins/ckptstore-torch"
venv="$repo/.venv-torch"

torch_pin="torch==2.13.0"
requirements="$torch_pin pytorch-lightning==2.6.6 pytest>=7.4 moto[s3]>=5.0 flask flask-cors"
# The S3 client stack at the versions the core is tested with (pyproject.toml): left free, pip's
# resolver walks back through hundreds of boto3/botocore releases to satisfy aiobotocore's narrow
# botocore pin next to moto's, which took over five minutes here.
s3_pins="boto3==1.43.117 botocore==1.43.117 aiobotocore==3.10.0 s3fs==2026.9.0 fsspec==2026.9.0 moto==5.2.5"

# Several people share this checkout: one install into the venv at a time (a second pip running
# into the same site-packages would corrupt it).
mkdir -p "$venv"
exec 9>"$venv/.install.lock"
flock 9

stamp="$venv/.ckptstore-test-stamp"
want="$(printf '%s\n' "$requirements" "$s3_pins" | cat - "$repo/pyproject.toml" "$plugin/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
        ('torch', 'pytorch_lightning', 'pytest', 'moto', 'boto3', 'ckptstore', 'ckptstore_torch')))" 2>/dev/null; then
    echo "test-torch: $venv up to date"
else
    echo "test-torch: installing into $venv ($requirements)"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    printf '%s\n' $torch_pin $s3_pins > "$constraints"
    "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet -c "$constraints" $requirements \
        -e "$repo[s3]" -e "$plugin" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    "$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    echo "$want" > "$stamp"
fi
flock -u 9
[ "$install_only" = 1 ] && exit 0

echo "test-torch: running plugin tests"
start=$SECONDS
cd "$plugin"
status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@" || status=$?
echo "test-torch: done in $((SECONDS - start)) s"
exit $status
