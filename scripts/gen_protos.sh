#!/usr/bin/env bash
# Generates the Python modules for tendermint/abci/types.proto and its imports into build/gen,
# from the CometBFT and gogoproto sources in the Go module cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${COMETBFT_VERSION:-v0.38.25}
gogo_version=${GOGOPROTO_VERSION:-v1.7.0}
py="$root/.venv/bin/python"
out="$root/build/gen"
stamp="$out/.stamp-$version-$gogo_version"
[ -f "$stamp" ] && exit 0

module_dir() {
  local dir
  if ! dir=$(cd "$root" && go mod download -json "$1" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); then
    echo "error: could not download Go module $1 (needed for its .proto files); check 'go env GOPROXY'" >&2
    exit 1
  fi
  echo "$dir"
}
cmt=$(module_dir "github.com/cometbft/cometbft@$version")
gogo=$(module_dir "github.com/cosmos/gogoproto@$gogo_version")
builtin=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')

rm -rf "$out" && mkdir -p "$out"
protos=(
  tendermint/abci/types.proto tendermint/crypto/proof.proto tendermint/crypto/keys.proto
  tendermint/types/params.proto tendermint/types/validator.proto tendermint/types/types.proto
  tendermint/types/canonical.proto tendermint/version/types.proto
)
"$py" -m grpc_tools.protoc -I "$cmt/proto" -I "$gogo" -I "$builtin" --python_out="$out" \
  "${protos[@]}" gogoproto/gogo.proto
for d in $(cd "$out" && find . -type d); do touch "$out/$d/__init__.py"; done
rm -f "$out/__init__.py"
# Make the generated packages importable from the venv without touching sys.path in code.
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$out" > "$site/haca_generated_protos.pth"
touch "$stamp"
echo "generated protobuf modules in build/gen"
