#!/usr/bin/env bash
# The README's test command (`make test`) runs this after `make setup`.
# Brings up the one-host SLURM cluster when we are root (CI is), runs every test, and tears the
# cluster down again. Exits non-zero on any failure, and also when pytest collected no tests.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
slurm_started=0
if [[ $EUID -eq 0 && ${HPCLLM_SKIP_SLURM:-0} != 1 && -x scripts/local-slurm.sh ]]; then
  if scripts/local-slurm.sh up; then
    slurm_started=1
    eval "$(scripts/local-slurm.sh env)"
  else
    echo "test.sh: the local SLURM cluster did not come up; its tests will fail" >&2
  fi
fi
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [[ $slurm_started == 1 ]]; then scripts/local-slurm.sh down || true; fi
if [[ $rc == 5 ]]; then
  echo "test.sh: pytest collected no tests — treating that as a failure" >&2
  exit 1
fi
exit $rc
