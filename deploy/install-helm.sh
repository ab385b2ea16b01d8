#!/usr/bin/env bash
# Builds helm from the Go module proxy (no prebuilt binaries are fetched) into
# $(go env GOPATH)/bin/helm. Skips the build when that binary is already the wanted version.
#
#   deploy/install-helm.sh            # prints the path of the helm binary on stdout
#   HELM_VERSION=v4.3.2 deploy/install-helm.sh
#
# helm.sh/helm/v4's go.mod has no `replace` lines, so a plain `go install` works.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
MODULE="helm.sh/helm/v4"
BIN="$(go env GOPATH)/bin/helm"

installed_version() {
    # `go version -m` reads the module version the binary was built from (no need to run it).
    [ -x "$BIN" ] || return 0
    go version -m "$BIN" 2>/dev/null | awk -v m="$MODULE" '$1 == "mod" && $2 == m { print $3 }'
}

if [ "$(installed_version)" = "$HELM_VERSION" ]; then
    echo "helm $HELM_VERSION already in $BIN" >&2
else
    echo "building helm $HELM_VERSION from the Go module proxy (a few minutes on 2 cores)..." >&2
    # The version string helm prints comes from an ldflag (its Makefile sets it the same way);
    # without it `helm version` would say only "v4.3".
    CGO_ENABLED=0 go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" \
        "${MODULE}/cmd/helm@${HELM_VERSION}"
    got="$(installed_version)"
    if [ "$got" != "$HELM_VERSION" ]; then
        echo "install-helm: built $BIN but it reports module version '$got', wanted $HELM_VERSION" >&2
        exit 1
    fi
fi
echo "$BIN"
