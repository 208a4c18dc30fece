#!/usr/bin/env bash
# The README's test command (`make test`) runs this after `make setup`.
# Brings up the one-host SLURM cluster when we are root (CI is), runs every test, and tears the
# cluster down again. Exits non-zero on any failure, and also when pytest collected no tests.
#
# The scheduler tests are required here (HPCLLM_REQUIRE_SLURM=1, see tests/slurm_gate.py): when
# the cluster cannot be reached they fail with the reason instead of skipping, so this run can
# never go green without them. A person who wants the rest only: scripts/test.sh -m "not slurm".
# HPCLLM_SKIP_SLURM=1: neither start nor stop the cluster (use one that is already up).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export HPCLLM_REQUIRE_SLURM=1
unset HPCLLM_REGEN_GOLDEN   # a regeneration run would rewrite golden files instead of checking them
slurm_started=0
slurm_problem=""
if [[ ${HPCLLM_SKIP_SLURM:-0} == 1 ]]; then
  :
elif [[ $EUID -ne 0 ]]; then
  echo "test.sh: not root, so the local SLURM cluster is not started here; the scheduler tests need it up already (sudo scripts/local-slurm.sh up)" >&2
elif [[ ! -x scripts/local-slurm.sh ]]; then
  slurm_problem="scripts/local-slurm.sh is missing or not executable"
elif scripts/local-slurm.sh up; then
  slurm_started=1
  eval "$(scripts/local-slurm.sh env)"
else
  slurm_problem="scripts/local-slurm.sh up failed (its output is above)"
fi
if [[ -n $slurm_problem ]]; then
  echo "test.sh: the local SLURM cluster did not come up: $slurm_problem; the scheduler tests will fail" >&2
fi
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [[ $slurm_started == 1 ]]; then scripts/local-slurm.sh down || true; fi
if [[ $rc == 5 ]]; then
  echo "test.sh: pytest collected no tests — treating that as a failure" >&2
  exit 1
fi
if [[ $rc != 0 && -n $slurm_problem ]]; then
  echo "test.sh: FAILED: the local SLURM cluster did not come up ($slurm_problem), so the scheduler tests could not run" >&2
fi
exit $rc
