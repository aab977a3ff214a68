#!/usr/bin/env bash
# Run the ckptstore-tensorflow plugin tests against each supported TensorFlow variant.
#
# Usage: scripts/test-tensorflow.sh [--install-only] [tf215|tf221 ...] [-- PYTEST_ARGS...]   (default: both)
#
# Each variant lives in its own virtualenv beside the repo, because TF 2.15 (the last release with
# tf.estimator) pins numpy < 2 and protobuf < 5 while TF 2.21 brings Keras 3; they cannot share one.
#   .venv-tf215: tensorflow-cpu==2.15.1 tensorflow-estimator==2.15.0  (Estimator + tf.compat.v1)
#   .venv-tf221: tensorflow-cpu==2.21.0                               (tf.compat.v1 sessions + Keras 3)
# Idempotent: a stamp file records what was installed; pip runs again only when the requirements or
# either pyproject.toml changed, or an import fails. The core suite (tests/) never imports TensorFlow;
# only plugins/ckptstore-tensorflow/tests runs here.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
plugin="$repo/plugins/ckptstore-tensorflow"

variants=()
pytest_args=()
install_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --install-only) install_only=1; shift ;;
        --) shift; pytest_args=("$@"); break ;;
        *) variants+=("$1"); shift ;;
    esac
done
[ ${#variants[@]} -eq 0 ] && variants=(tf215 tf221)

requirements() {
    case "$1" in
        tf215) echo "tensorflow-cpu==2.15.1 tensorflow-estimator==2.15.0" ;;
        tf221) echo "tensorflow-cpu==2.21.0" ;;
        *) echo "unknown variant: $1 (expected tf215 or tf221)" >&2; return 2 ;;
    esac
}

# Test-only extras: pytest, and the S3 test server (moto) the end-to-end tests start on 127.0.0.1.
test_requirements="pytest>=7.4 moto[s3]>=5.0 flask flask-cors"

ensure_venv() {
    local variant="$1" venv="$repo/.venv-$1" reqs
    reqs="$(requirements "$variant")"
    local stamp="$venv/.ckptstore-test-stamp"
    local want
    want="$(printf '%s\n%s\n' "$reqs" "$test_requirements" | cat - "$repo/pyproject.toml" "$plugin/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$venv/bin/python" -c "import tensorflow, pytest, ckptstore_tensorflow; from ckptstore import CheckpointStore" 2>/dev/null; then
        echo "test-tensorflow: $variant: $venv up to date"
        return 0
    fi
    echo "test-tensorflow: $variant: installing into $venv ($reqs)"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    # One resolver run for everything so pip cannot pick a numpy or protobuf that TF then rejects.
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet $reqs $test_requirements \
        -e "$repo[s3]" -e "$plugin" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    echo "$want" > "$stamp"
}

status=0
for variant in "${variants[@]}"; do
    ensure_venv "$variant"
    [ "$install_only" = 1 ] && continue
    echo "test-tensorflow: $variant: running plugin tests"
    start=$SECONDS
    # TF's C++ banner and oneDNN notices drown pytest's output; they carry no test information.
    if ! (cd "$plugin" && TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES="" \
        "$repo/.venv-$variant/bin/python" -m pytest -q -p no:cacheprovider tests ${pytest_args[@]+"${pytest_args[@]}"}); then
        status=1
    fi
    echo "test-tensorflow: $variant: done in $((SECONDS - start)) s"
done
exit $status
