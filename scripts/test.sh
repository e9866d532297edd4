#!/usr/bin/env bash
# Set up everything on a fresh machine (scripts/setup.sh) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k codec -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
