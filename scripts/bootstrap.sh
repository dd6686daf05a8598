#!/usr/bin/env bash
# Create .venv and install neve with everything the demo and the tests need.
# Works on a fresh machine with Python >= 3.11 and access to PyPI. Idempotent and quick when
# nothing changed (a stamp file records the hash of pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${NEVE_EXTRAS:-frameworks,dev,postgres,ray}
stamp=.venv/.neve-installed
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip uv
UV=.venv/bin/uv
export VIRTUAL_ENV="$PWD/.venv"
# torch: the CPU build. pip honours the machine's local wheel directory (PIP_FIND_LINKS), where
# torch 2.13.0+cpu lies on these machines; elsewhere the PyTorch CPU index is used.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[bootstrap] installing torch 2.13.0 (CPU build)"
  .venv/bin/python -m pip install -q "torch==2.13.0" \
    || .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
echo "[bootstrap] installing neve[$EXTRAS] with uv"
# torch is already installed: keep it (never let the resolver swap in a CUDA build).
torch_ver=$(.venv/bin/python -c "import torch; print(torch.__version__)")
echo "torch==${torch_ver}" > .venv/.torch-constraint.txt
"$UV" pip install --python .venv/bin/python -q -c .venv/.torch-constraint.txt -e ".[$EXTRAS]"
# Byte-compile everything once (also what pip or an earlier run left uncompiled): machines that
# set PYTHONDONTWRITEBYTECODE would otherwise compile numpy, pandas, torch... from source in every
# new process (the test suite starts hundreds: collection alone took twice as long).
echo "[bootstrap] byte-compiling .venv"
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages >/dev/null 2>&1 || true
echo "$want" > "$stamp"
echo "[bootstrap] ready: $(.venv/bin/python --version), .venv"
