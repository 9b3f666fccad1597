#!/usr/bin/env bash
# Letterbox on a local kind cluster, for people with Docker, kind, kubectl and helm:
# creates the cluster (kind/cluster.yaml), builds the image and loads it into the node, installs
# the chart, applies examples/, and prints how to send a message and read it back.
#
#   kind/up.sh            # everything; safe to run again (each step is idempotent)
#   kind/up.sh --delete   # remove the cluster
#
# Environment: LETTERBOX_KIND_CLUSTER (default letterbox), LETTERBOX_NAMESPACE (default letterbox),
# LETTERBOX_IMAGE (default letterbox:dev).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${LETTERBOX_KIND_CLUSTER:-letterbox}"
NAMESPACE="${LETTERBOX_NAMESPACE:-letterbox}"
IMAGE="${LETTERBOX_IMAGE:-letterbox:dev}"
CONTEXT="kind-${CLUSTER}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }

for tool in docker kind kubectl helm openssl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (see docs/install.md, 'Try it on kind')"
done

if [[ "${1:-}" == "--delete" ]]; then
    kind delete cluster --name "$CLUSTER"
    exit 0
fi

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "cluster $CLUSTER exists"
else
    log "creating kind cluster $CLUSTER (host ports 25, 465, 587, 993, 443 on 127.0.0.1)"
    kind create cluster --name "$CLUSTER" --config "$ROOT/kind/cluster.yaml" --wait 120s
fi

log "building $IMAGE"
docker build --tag "$IMAGE" "$ROOT"
log "loading $IMAGE into the cluster's node"
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the chart into namespace $NAMESPACE"
# The mail Service is a NodePort here (kind has no load balancer); the node ports are pinned
# below so that kind/cluster.yaml's port mappings reach them.
helm upgrade --install letterbox "$ROOT/charts/letterbox" \
    --kube-context "$CONTEXT" --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set image.pullPolicy=Never \
    --set mail.service.type=NodePort \
    --set mail.storage.size=1Gi \
    --wait --timeout 5m

# Until a certificate source is configured (docs/install.md), a self-signed certificate for
# the example's mail host lets the mail pod start; the operator never overwrites it.
if ! k -n "$NAMESPACE" get secret mailpod-tls >/dev/null 2>&1; then
    log "creating a self-signed certificate for mail.example.com (Secret mailpod-tls)"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    openssl req -x509 -newkey rsa:2048 -nodes -days 90 -subj "/CN=mail.example.com" \
        -addext "subjectAltName=DNS:mail.example.com" \
        -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null
    k -n "$NAMESPACE" create secret tls mailpod-tls --cert "$tmp/tls.crt" --key "$tmp/tls.key"
fi

log "applying examples/"
k -n "$NAMESPACE" apply -f "$ROOT/examples/"
k -n "$NAMESPACE" wait --for=condition=Ready --timeout=120s maildomains,mailboxes,aliases,dkimkeys --all

log "pinning the mail Service's node ports to kind/cluster.yaml's mappings"
k -n "$NAMESPACE" patch service mailpod --type strategic -p '{"spec":{"ports":[
    {"port":25,"nodePort":30025},{"port":465,"nodePort":30465},
    {"port":587,"nodePort":30587},{"port":993,"nodePort":30993}]}}' >/dev/null
k -n "$NAMESPACE" rollout status statefulset/mailpod --timeout=5m

password="$(k -n "$NAMESPACE" get secret alice-credentials -o jsonpath='{.data.password}' | base64 -d)"
cat <<EOT

Letterbox runs on kind cluster $CLUSTER (namespace $NAMESPACE).

Send alice a message, as another mail server would (port 25):
  swaks --server 127.0.0.1:25 --from friend@example.net --to alice@example.com \\
        --header "Subject: hello from kind"

Read it back over IMAPS (self-signed certificate, hence -k):
  curl -k "imaps://127.0.0.1:993/INBOX;UID=1" -u 'alice@example.com:$password'

Submit as alice (port 465, TLS):
  swaks --server 127.0.0.1:465 --tls-on-connect \\
        --auth-user alice@example.com --auth-password '$password' \\
        --from alice@example.com --to alice@example.com

Status of everything:  kubectl --context $CONTEXT -n $NAMESPACE get mail
DNS records to publish: kubectl --context $CONTEXT -n $NAMESPACE get maildomain example-com -o yaml
Port 443 is mapped for an Ingress controller serving mta-sts. and autoconfig. (docs/install.md).
Remove the cluster:     kind/up.sh --delete
EOT
