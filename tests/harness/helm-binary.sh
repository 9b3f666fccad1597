#!/usr/bin/env bash
# Provide the `helm` binary the chart tests render with (tests/harness/helm.py).
# Prints the path of the binary as the LAST line of stdout; progress goes to stderr.
#
# Resolution order:
#   1. $LETTERBOX_HELM, if it is an executable helm of the pinned version's major (v3).
#   2. The cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/letterbox/helm-v<ver>/helm).
#   3. Otherwise `go install helm.sh/helm/v3/cmd/helm@v<ver>` into that cache through the Go
#      module proxy (about two minutes on 2 cores the first time; instant afterwards).
set -euo pipefail

HELM_VERSION="3.19.5"   # helm.sh/helm/v3 module version (without the v)
BUILD_ID="1"            # bump when the build flags change: a new cache directory

log() { printf '[helm-binary %s] %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ -n "${LETTERBOX_HELM:-}" ]]; then
    if [[ -x "$LETTERBOX_HELM" ]] && "$LETTERBOX_HELM" version --short 2>/dev/null | grep -q '^v3\.'; then
        log "using \$LETTERBOX_HELM=$LETTERBOX_HELM"
        printf '%s\n' "$LETTERBOX_HELM"
        exit 0
    fi
    log "\$LETTERBOX_HELM=$LETTERBOX_HELM is not a Helm 3 binary; falling back to the cache"
fi

CACHE_DIR="${LETTERBOX_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/letterbox/helm-v${HELM_VERSION}-${BUILD_ID}}"
TARGET="$CACHE_DIR/helm"

if [[ -x "$TARGET" && -s "$TARGET" ]]; then
    printf '%s\n' "$TARGET"
    exit 0
fi

mkdir -p "$CACHE_DIR"
# Serialise concurrent callers; the loser waits and then finds the binary in place.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    log "another build is running in $CACHE_DIR; waiting for it"
    flock 9
fi
if [[ -x "$TARGET" && -s "$TARGET" ]]; then
    printf '%s\n' "$TARGET"
    exit 0
fi

command -v go >/dev/null 2>&1 || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || die "Go is needed to build helm (looked on PATH and in /usr/local/go/bin)"

STAGE="$(mktemp -d "$CACHE_DIR/.stage.XXXXXX")"   # same filesystem: mv is atomic
trap 'rm -rf "$STAGE"' EXIT
trap 'exit 130' INT TERM

export GOWORK=off
export CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
case "${GOTOOLCHAIN:-local}" in
    local) export GOTOOLCHAIN="local+auto" ;;
    *) export GOTOOLCHAIN ;;
esac

START=$(date +%s)
log "building helm v${HELM_VERSION} with $(go version | cut -d' ' -f3) into $CACHE_DIR"
# Stamp versions as Helm's Makefile does: `helm version`, and the Kubernetes version that
# `helm template` and `helm lint` assume (unstamped it is v1.20, which the chart's kubeVersion
# rejects); Helm v3.19 is built against client-go v0.34, i.e. Kubernetes 1.34.
K8S_MINOR=34
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    LDFLAGS+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${K8S_MINOR}"
done
GOBIN="$STAGE" go install -trimpath -ldflags="$LDFLAGS" "helm.sh/helm/v3/cmd/helm@v${HELM_VERSION}" >&2
[[ -x "$STAGE/helm" && -s "$STAGE/helm" ]] || die "go install produced no helm"
"$STAGE/helm" version --short >&2
mv -f "$STAGE/helm" "$TARGET"
log "done in $(( $(date +%s) - START ))s"
printf '%s\n' "$TARGET"
