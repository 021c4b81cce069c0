#!/usr/bin/env bash
# Builds the pinned CometBFT (v0.38.x; never v1.x, whose ABCI differs) into .tools/bin.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${COMETBFT_VERSION:-v0.38.25}
bin="$root/.tools/bin/cometbft"

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed; install Go >= 1.22 (https://go.dev/dl) and run 'make setup' again" >&2
  exit 1
fi
if [ -x "$bin" ] && [ "$("$bin" version 2>/dev/null)" = "${version#v}" ]; then
  exit 0
fi
case "$version" in
  v0.38.*) ;;
  *) echo "error: COMETBFT_VERSION=$version: HACA needs CometBFT v0.38.x" >&2; exit 1 ;;
esac
echo "building CometBFT $version into .tools/bin (about a minute)"
mkdir -p "$root/.tools/bin"
if ! CGO_ENABLED=0 GOBIN="$root/.tools/bin" GOFLAGS=-buildvcs=false \
    go install "github.com/cometbft/cometbft/cmd/cometbft@$version"; then
  echo "error: 'go install github.com/cometbft/cometbft/cmd/cometbft@$version' failed;" >&2
  echo "  check that the Go module proxy is reachable (go env GOPROXY) or set COMETBFT_VERSION to a served v0.38.x" >&2
  exit 1
fi
"$bin" version
