#!/usr/bin/env bash
# kustomize (renders deploy/k8s) and kubeconform (validates the output against deploy/k8s/schemas), pinned, built
# from the Go module proxy into .vigil/bin (git-ignored): `vigil k8s check` and tests/integration/test_k8s.py use
# them. Needs Go (on every machine of this project's kind). A second run finds them and does nothing.
set -euo pipefail
KUSTOMIZE_VERSION=v5.5.0
KUBECONFORM_VERSION=v0.7.0
bin="$(cd "$(dirname "$0")/.." && pwd)/.vigil/bin"
mkdir -p "$bin"
have() { [[ -x "$bin/$1" && "$(cat "$bin/$1.version" 2>/dev/null)" == "$2" ]]; }
if ! command -v go >/dev/null 2>&1; then
  echo "go not found: install Go to build kustomize and kubeconform" >&2
  exit 1
fi
if ! have kustomize "$KUSTOMIZE_VERSION"; then
  GOBIN="$bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  echo "$KUSTOMIZE_VERSION" > "$bin/kustomize.version"
fi
if ! have kubeconform "$KUBECONFORM_VERSION"; then
  GOBIN="$bin" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  echo "$KUBECONFORM_VERSION" > "$bin/kubeconform.version"
fi
