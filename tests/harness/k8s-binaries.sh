#!/usr/bin/env bash
# Provide kube-apiserver, kube-controller-manager and etcd for the e2e control
# plane (tests/harness/controlplane.py), the way controller-runtime's envtest
# uses them.  Prints the directory holding the three binaries as the LAST line
# of stdout; all progress goes to stderr.
#
# Resolution order:
#   1. $LETTERBOX_K8S_BIN, then $KUBEBUILDER_ASSETS, if it holds all three.
#   2. The cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/letterbox/k8s-v<ver>/,
#      override with $LETTERBOX_K8S_CACHE) if it holds all three.
#   3. Otherwise build them from the Go module proxy with the installed Go
#      (several minutes on 2 cores the first time; instant afterwards).
#
# kube-apiserver / kube-controller-manager come from k8s.io/kubernetes, whose
# go.mod replaces every staging module (k8s.io/api, ...) with ./staging/...,
# so `go install ...@version` cannot work.  We build them from a throw-away
# wrapper module that requires k8s.io/kubernetes and replaces each staging
# module with its published k8s.io/X v0.<minor>.<patch> release.  etcd is
# built from the same module graph (go.etcd.io/etcd/server/v3 at the version
# k/k itself pins), so Go plus the module proxy is the only requirement.
set -euo pipefail

K8S_VERSION="1.33.13"                   # k8s.io/kubernetes tag (without the v)
STAGING_VERSION="0.${K8S_VERSION#1.}"   # k8s.io/api etc. -> v0.33.13
ETCD_VERSION="v3.5.21"                  # what k/k v1.33.13's go.mod pins
BINARIES=(kube-apiserver kube-controller-manager etcd)

log() { printf '[k8s-binaries %s] %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

has_all() {
    local dir="$1" b
    [[ -n "$dir" && -d "$dir" ]] || return 1
    for b in "${BINARIES[@]}"; do
        [[ -x "$dir/$b" && -s "$dir/$b" ]] || return 1
    done
}

for var in LETTERBOX_K8S_BIN KUBEBUILDER_ASSETS; do
    dir="${!var:-}"
    [[ -n "$dir" ]] || continue
    if has_all "$dir"; then
        log "using \$$var=$dir"
        printf '%s\n' "$dir"
        exit 0
    fi
    log "\$$var=$dir lacks one of ${BINARIES[*]}; falling back to the cache"
done

CACHE_DIR="${LETTERBOX_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/letterbox/k8s-v${K8S_VERSION}}"

if has_all "$CACHE_DIR"; then
    printf '%s\n' "$CACHE_DIR"
    exit 0
fi

mkdir -p "$CACHE_DIR"
# Serialise concurrent callers (parallel test workers, two shells); the loser
# waits and then finds the binaries in place.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    log "another build is running in $CACHE_DIR; waiting for it"
    flock 9
fi
if has_all "$CACHE_DIR"; then
    printf '%s\n' "$CACHE_DIR"
    exit 0
fi

command -v go >/dev/null 2>&1 || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || die "Go is needed to build the control plane (looked on PATH and in /usr/local/go/bin)"
command -v curl >/dev/null 2>&1 || die "curl is needed"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/letterbox-k8s-build.XXXXXX")"
STAGE="$(mktemp -d "$CACHE_DIR/.stage.XXXXXX")"   # same filesystem: mv is atomic
cleanup() { rm -rf "$WORK" "$STAGE"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export GOWORK=off
export CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
# k/k v1.33.13 declares go 1.24.0; the local Go is used when it is at least
# that (built and tested with go1.26.8).  An older one makes Go fetch the
# go1.24.0 toolchain from the module proxy instead of failing.
case "${GOTOOLCHAIN:-local}" in
    local) export GOTOOLCHAIN="local+auto" ;;
    *) export GOTOOLCHAIN ;;
esac

START=$(date +%s)
log "building kube-apiserver, kube-controller-manager v${K8S_VERSION} and etcd ${ETCD_VERSION} with $(go version | cut -d' ' -f3) into $CACHE_DIR (first time: several minutes)"

PROXY="${GOPROXY%%,*}"
[[ "$PROXY" == http* ]] || PROXY="https://proxy.golang.org"
log "fetching k8s.io/kubernetes v${K8S_VERSION} go.mod"
curl -fsSL --retry 3 "$PROXY/k8s.io/kubernetes/@v/v${K8S_VERSION}.mod" -o "$WORK/kubernetes.mod" \
    || die "could not fetch $PROXY/k8s.io/kubernetes/@v/v${K8S_VERSION}.mod"

REPLACES="$(sed -nE 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+)[[:space:]]+=>[[:space:]]+\./staging/src/k8s\.io/[A-Za-z0-9._-]+[[:space:]]*$#\t\1 => \1 v'"${STAGING_VERSION}"'#p' "$WORK/kubernetes.mod")"
[[ -n "$REPLACES" ]] || die "no staging replace lines found in k8s.io/kubernetes v${K8S_VERSION} go.mod"
log "replacing $(printf '%s\n' "$REPLACES" | wc -l) staging modules with v${STAGING_VERSION}"

cat >"$WORK/go.mod" <<EOF
module letterbox.local/k8sbinaries

go 1.24.0

godebug default=go1.24

replace (
$REPLACES
)
EOF

cd "$WORK"
log "resolving modules (go get)"
go get \
    "k8s.io/kubernetes/cmd/kube-apiserver@v${K8S_VERSION}" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@v${K8S_VERSION}" \
    "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2

# Version stamping as hack/lib/version.sh does, so `kubectl version` and the
# apiserver's /version report v1.33.13 instead of v0.0.0-master.
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
MINOR="${K8S_VERSION#1.}"; MINOR="${MINOR%%.*}"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X ${pkg}.gitVersion=v${K8S_VERSION}"
    LDFLAGS+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${MINOR}"
    LDFLAGS+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${BUILD_DATE}"
done

log "compiling kube-apiserver (the long part)"
go build -trimpath -ldflags="$LDFLAGS" -o "$STAGE/kube-apiserver" "k8s.io/kubernetes/cmd/kube-apiserver" >&2
log "compiling kube-controller-manager"
go build -trimpath -ldflags="$LDFLAGS" -o "$STAGE/kube-controller-manager" "k8s.io/kubernetes/cmd/kube-controller-manager" >&2
log "compiling etcd"
go build -trimpath -ldflags="-s -w" -o "$STAGE/etcd" "go.etcd.io/etcd/server/v3" >&2

for b in "${BINARIES[@]}"; do
    [[ -x "$STAGE/$b" && -s "$STAGE/$b" ]] || die "build produced no $b"
done
"$STAGE/kube-apiserver" --version >&2
"$STAGE/etcd" --version >&2
# etcd last: has_all() needs all three, so an interrupted move means a rebuild.
for b in kube-apiserver kube-controller-manager etcd; do
    mv -f "$STAGE/$b" "$CACHE_DIR/$b"
done
log "done in $(( $(date +%s) - START ))s"
printf '%s\n' "$CACHE_DIR"
