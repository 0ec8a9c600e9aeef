#!/usr/bin/env bash
# Install the prebuilt OHIF Viewer (the npm package @ohif/app) that the node serves at /viewer/.
#
#   deploy/ohif/install.sh VERSION INTEGRITY TARGET
#
# VERSION is the pinned package version, INTEGRITY its npm integrity string
# ("sha512-<base64>", as `npm view @ohif/app@VERSION dist.integrity` prints it) and TARGET
# the folder to fill with the package's dist/ (the node's `[web] ohif_dist`).
#
# The tarball is fetched once with `npm pack` (npm's registry, proxy and cache settings
# apply), refused unless its SHA-512 equals INTEGRITY, and unpacked beside TARGET, which
# is then swapped in whole: an interrupted run leaves the previous install in place. A
# TARGET already holding this VERSION and INTEGRITY is left alone.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 VERSION INTEGRITY TARGET" >&2
  exit 2
fi
version=$1
integrity=$2
target=${3%/}
stamp_name=.radnode-ohif
wanted="@ohif/app@$version $integrity"

if [ -f "$target/$stamp_name" ] && [ "$(cat "$target/$stamp_name")" = "$wanted" ]; then
  echo "OHIF Viewer $version already installed in $target"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is missing: run \`make system-deps\`" >&2; exit 1; }

parent=$(dirname "$target")
mkdir -p "$parent"
work=$(mktemp -d "$parent/.ohif-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetching @ohif/app@$version from the npm registry"
npm pack --silent --pack-destination "$work" "@ohif/app@$version" >/dev/null
tarball="$work/ohif-app-$version.tgz"
actual=$(python3 - "$tarball" <<'PY'
import base64, hashlib, sys
with open(sys.argv[1], "rb") as handle:
    digest = hashlib.file_digest(handle, "sha512").digest()
print("sha512-" + base64.b64encode(digest).decode("ascii"))
PY
)
if [ "$actual" != "$integrity" ]; then
  echo "refusing @ohif/app@$version: its SHA-512 is $actual, the pinned one $integrity" >&2
  exit 1
fi

tar -xzf "$tarball" -C "$work" package/dist
test -f "$work/package/dist/index.html" || { echo "the package has no dist/index.html" >&2; exit 1; }
printf '%s\n' "$wanted" > "$work/package/dist/$stamp_name"
if [ -e "$target" ]; then
  mv "$target" "$work/previous"
fi
mv "$work/package/dist" "$target"
echo "OHIF Viewer $version installed in $target"
