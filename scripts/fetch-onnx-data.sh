#!/usr/bin/env bash
# Fetches the ONNX backend test data (node tests and the "light" CNN models) from the
# `onnx` 1.22.0 wheel on the Python package index, the last release that ships them, and
# extracts `onnx/backend/test/data/{node,light}` into .data/onnx/ (or $ONNX_DATA_DIR).
#
# Idempotent: a completed extraction is marked and left alone. Needs python3 with pip and
# access to the package index; nothing else (the wheel is read with Python's zipfile).
# The wheel is pinned by platform and by its sha256, so every machine extracts the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.22.0
WHEEL="onnx-${VERSION}-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
SHA256=955e02e1f6d385b53d52f9cd7b9cdf5caf417c300bcfe3c64c6d542be763845b
DEST="${ONNX_DATA_DIR:-.data/onnx}"
MARKER="$DEST/.complete-onnx-$VERSION"

if [[ -f "$MARKER" ]]; then
    echo "onnx test data already in $DEST (remove $MARKER to fetch again)"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# The data is the same in every platform's wheel; pinning one platform keeps the hash fixed.
python3 -m pip download "onnx==$VERSION" --no-deps --only-binary=:all: --disable-pip-version-check \
    --platform manylinux_2_28_x86_64 --python-version 3.12 --implementation cp --abi abi3 \
    -d "$TMP" >&2
if [[ ! -f "$TMP/$WHEEL" ]]; then
    echo "error: pip did not download $WHEEL (got: $(ls "$TMP"))" >&2
    exit 1
fi
GOT="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$TMP/$WHEEL")"
if [[ "$GOT" != "$SHA256" ]]; then
    echo "error: $WHEEL has sha256 $GOT, expected $SHA256" >&2
    exit 1
fi

rm -rf "$DEST/node" "$DEST/light"
mkdir -p "$DEST"
python3 - "$TMP/$WHEEL" "$DEST" <<'PY'
import os, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
prefix = "onnx/backend/test/data/"
kept = {"node": 0, "light": 0}
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        kind = rel.split("/", 1)[0]
        if kind not in kept:
            continue
        # Refuse paths that would escape the destination.
        if os.path.isabs(rel) or ".." in rel.split("/"):
            sys.exit(f"error: unsafe path in wheel: {info.filename}")
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        kept[kind] += 1
cases = len([d for d in os.listdir(os.path.join(dest, "node")) if os.path.isdir(os.path.join(dest, "node", d))])
models = len([f for f in os.listdir(os.path.join(dest, "light")) if f.endswith(".onnx")])
print(f"extracted {kept['node']} files of {cases} node test cases and {models} light models into {dest}")
PY
touch "$MARKER"
