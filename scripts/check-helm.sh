#!/usr/bin/env bash
# Offline checks of the Helm chart deploy/helm/lorasweep: lint, render with the default and a
# full set of values, validate every manifest against the Kubernetes 1.29-1.33 schemas (strict:
# unknown fields are errors), check facts of the output, and check that bad values (a misspelled
# key, short or equal tokens, a grace period shorter than the worker's shutdown grace) are
# refused. Needs no helm binary, cluster or network beyond PyPI for the first run's venv.
#
#   scripts/check-helm.sh            # creates target/helm-venv on first use
#
# helm-python-sdk carries Helm's Go SDK (v4) as a shared library, so no helm binary is
# downloaded; kubernetes-validate carries the Kubernetes JSON schemas.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

venv=target/helm-venv
# Pinned: the checks rely on these versions' APIs (and kubernetes-validate's schema set).
requirements=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)

if ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
    echo "check-helm: creating $venv (${requirements[*]})"
    python3 -m venv "$venv" || { echo "check-helm: python3 -m venv failed (apt-get install python3-venv?)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}" \
        || { echo "check-helm: pip install of ${requirements[*]} failed" >&2; exit 1; }
fi

if ! "$venv/bin/python" deploy/helm/ci/check_chart.py; then
    echo "check-helm: FAILED (see the FAIL lines above)" >&2
    exit 1
fi
