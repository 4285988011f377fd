#!/usr/bin/env bash
# Fetches the PP-OCR text classifier, recognizer and detector that the
# `rapidocr-onnxruntime` 1.4.4 wheel ships (`rapidocr_onnxruntime/models/*.onnx`) into
# .data/ppocr/ (or $PPOCR_DATA_DIR), installs pinned onnxruntime and numpy wheels into
# .data/py/ (never system-wide), and runs scripts/ppocr_reference.py with them: a seeded
# input per model and onnxruntime's outputs, saved as .npy beside the model with a
# manifest.json that crates/compiler/tests/ppocr.rs and crates/cli/tests/ppocr.rs read.
#
# Idempotent: a completed run is stamped with the hash of this script and of the
# reference script; while both are unchanged it is left alone. Needs python3 (3.11, 3.12
# or 3.13 on x86-64 Linux) with pip and access to the package index; nothing else.
# Every wheel is pinned by version and sha256, so every machine gets the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."

RAPIDOCR_VERSION=1.4.4
RAPIDOCR_WHEEL="rapidocr_onnxruntime-${RAPIDOCR_VERSION}-py3-none-any.whl"
RAPIDOCR_SHA256=971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf
ORT_VERSION=1.22.1
NUMPY_VERSION=2.2.6
DEST="${PPOCR_DATA_DIR:-.data/ppocr}"
PYDEST="${PPOCR_PYTHON_DIR:-.data/py}"

stamp() {
    python3 -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(p,"rb").read() for p in sys.argv[1:])).hexdigest())' \
        scripts/fetch-ppocr.sh scripts/ppocr_reference.py
}
STAMP="$(stamp)"
MARKER="$DEST/.complete"
if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$STAMP" ]]; then
    echo "PP-OCR models and onnxruntime references already in $DEST (remove $MARKER to make them again)"
    exit 0
fi

PY_TAG="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
case "$PY_TAG" in
    3.11 | 3.12 | 3.13) ;;
    *)
        echo "error: python3 is $PY_TAG; the pinned onnxruntime $ORT_VERSION and numpy $NUMPY_VERSION wheels" \
            "are for Python 3.11, 3.12 and 3.13 (add that version's hashes to scripts/fetch-ppocr.sh)" >&2
        exit 1
        ;;
esac

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# 1. The models, out of the rapidocr wheel (read with zipfile; the package is never installed).
python3 -m pip download "rapidocr-onnxruntime==$RAPIDOCR_VERSION" --no-deps --only-binary=:all: \
    --disable-pip-version-check -d "$TMP" >&2
if [[ ! -f "$TMP/$RAPIDOCR_WHEEL" ]]; then
    echo "error: pip did not download $RAPIDOCR_WHEEL (got: $(ls "$TMP"))" >&2
    exit 1
fi
GOT="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$TMP/$RAPIDOCR_WHEEL")"
if [[ "$GOT" != "$RAPIDOCR_SHA256" ]]; then
    echo "error: $RAPIDOCR_WHEEL has sha256 $GOT, expected $RAPIDOCR_SHA256" >&2
    exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
python3 - "$TMP/$RAPIDOCR_WHEEL" "$DEST" <<'PY'
import os, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
prefix = "rapidocr_onnxruntime/models/"
names = []
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        rel = info.filename[len(prefix):]
        if not info.filename.startswith(prefix) or not rel.endswith(".onnx") or "/" in rel:
            continue
        with z.open(info) as src, open(os.path.join(dest, rel), "wb") as out:
            out.write(src.read())
        names.append(rel)
if len(names) != 3:
    sys.exit(f"error: expected the det, cls and rec models in {wheel}, found {names}")
print(f"extracted {', '.join(sorted(names))} into {dest}")
PY

# 2. onnxruntime and numpy, hash-checked by pip, into a private directory.
cat >"$TMP/requirements.txt" <<EOF
onnxruntime==$ORT_VERSION \\
    --hash=sha256:f6effa1299ac549a05c784d50292e3378dbbf010346ded67400193b09ddc2f04 \\
    --hash=sha256:2d39a530aff1ec8d02e365f35e503193991417788641b184f5b1e8c9a6d5ce8d \\
    --hash=sha256:b0c37070268ba4e02a1a9d28560cd00cd1e94f0d4f275cbef283854f861a65fa
numpy==$NUMPY_VERSION \\
    --hash=sha256:ba10f8411898fc418a521833e014a77d3ca01c15b0c6cdcce6a0d2897e6dbbdf \\
    --hash=sha256:fd83c01228a688733f1ded5201c678f0c53ecc1006ffbc404db9f7a899ac6249 \\
    --hash=sha256:1bc23a79bfabc5d056d106f9befb8d50c31ced2fbc70eedb8155aec74a45798f
EOF
PY_MARKER="$PYDEST/.complete-onnxruntime-$ORT_VERSION-numpy-$NUMPY_VERSION-py$PY_TAG"
if [[ ! -f "$PY_MARKER" ]]; then
    rm -rf "$PYDEST"
    # onnxruntime's other requirements (protobuf, sympy, ...) serve its tools, not inference.
    python3 -m pip install --no-deps --only-binary=:all: --require-hashes --disable-pip-version-check \
        --no-warn-script-location --target "$PYDEST" -r "$TMP/requirements.txt" >&2
    touch "$PY_MARKER"
fi

# 3. The references.
PYTHONPATH="$PYDEST" python3 scripts/ppocr_reference.py "$DEST"
echo "$STAMP" >"$MARKER"
