"""Reference outputs of the PP-OCR models from onnxruntime, for trainyard's tests.

Run by scripts/fetch-ppocr.sh with PYTHONPATH pointing at the pinned onnxruntime and numpy.
For each model in DIR it builds a deterministic, image-like input (a synthetic page or text
line drawn with a seeded generator, normalized the way PP-OCR's pre-processing does), runs
onnxruntime's CPU provider, and writes beside the model:

    NAME.in.0.npy, NAME.out.0.npy, ...   the input and the outputs (float32, C order)

and DIR/manifest.json, which names every file, the graph names they bind to, and the
versions that produced them.

Usage: python3 scripts/ppocr_reference.py DIR
"""

import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort

# Shapes are kept small enough for the interpreter's debug build (a second or two each)
# while staying at sizes PP-OCR really feeds: the classifier's 48x192 line, the
# recognizer's 48-pixel-high line, and a detector page whose sides are multiples of 32.
MODELS = [
    # (file stem, input shape, normalization)
    ("ch_ppocr_mobile_v2.0_cls_infer", (1, 3, 48, 192), "line"),
    ("ch_PP-OCRv4_rec_infer", (1, 3, 48, 320), "line"),
    ("ch_PP-OCRv4_det_infer", (1, 3, 320, 320), "page"),
]

SEED = 20240607

# PP-OCR's detector normalizes with the ImageNet statistics; the classifier and the
# recognizer map [0, 1] to [-1, 1].
DET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def draw_text_line(img, rng, top, left, height, width):
    """Draws glyph-like dark strokes in a box of `img` (H x W, values in [0, 1])."""
    x = left + int(rng.integers(0, max(1, height // 2)))
    stroke = max(1, height // 8)
    while x + height // 2 < left + width:
        glyph_w = int(rng.integers(height // 2, height + 1))
        glyph_w = min(glyph_w, left + width - x)
        ink = float(rng.uniform(0.0, 0.25))
        for _ in range(int(rng.integers(2, 5))):
            if rng.random() < 0.5:  # a horizontal bar
                y = top + int(rng.integers(0, max(1, height - stroke)))
                x0 = x + int(rng.integers(0, max(1, glyph_w // 2)))
                x1 = x0 + int(rng.integers(glyph_w // 3, glyph_w + 1))
                img[y : y + stroke, x0 : min(x1, x + glyph_w)] = ink
            else:  # a vertical bar
                xs = x + int(rng.integers(0, max(1, glyph_w - stroke)))
                y0 = top + int(rng.integers(0, max(1, height // 3)))
                y1 = y0 + int(rng.integers(height // 2, height + 1))
                img[y0 : min(y1, top + height), xs : xs + stroke] = ink
        x += glyph_w + int(rng.integers(1, max(2, height // 4)))
        if rng.random() < 0.12:  # a word gap
            x += height // 2


def make_image(shape, kind, rng):
    """An NCHW float32 image in [0, 1): paper with a little noise and dark text."""
    n, c, h, w = shape
    out = np.empty(shape, dtype=np.float32)
    for b in range(n):
        gray = np.full((h, w), 0.0, dtype=np.float64)
        gray += np.linspace(0.82, 0.95, w)[None, :]  # uneven lighting
        if kind == "line":
            margin = max(2, h // 8)
            draw_text_line(gray, rng, margin, margin, h - 2 * margin, w - 2 * margin)
        else:
            y = int(rng.integers(8, 24))
            while y + 16 < h:
                line_h = int(rng.integers(12, 28))
                left = int(rng.integers(4, w // 4))
                right = int(rng.integers(w // 2, w - 4))
                if y + line_h >= h:
                    break
                draw_text_line(gray, rng, y, left, line_h, right - left)
                y += line_h + int(rng.integers(8, 24))
        tint = rng.uniform(0.95, 1.0, size=c)
        for ch in range(c):
            noisy = gray * tint[ch] + rng.normal(0.0, 0.02, size=(h, w))
            out[b, ch] = np.clip(noisy, 0.0, 0.999).astype(np.float32)
    return out


def normalize(img, kind):
    if kind == "page":
        return ((img - DET_MEAN[None, :, None, None]) / DET_STD[None, :, None, None]).astype(np.float32)
    return ((img - 0.5) / 0.5).astype(np.float32)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    opts = ort.SessionOptions()
    # One thread and no graph rewrites: the reference is the model as written, computed
    # the same way on every machine.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    manifest = {
        "generator": "scripts/ppocr_reference.py",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "seed": SEED,
        "models": [],
    }
    for index, (stem, shape, kind) in enumerate(MODELS):
        model_path = os.path.join(root, stem + ".onnx")
        session = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        if len(inputs) != 1:
            sys.exit(f"error: {model_path} has {len(inputs)} inputs, expected one image")
        rng = np.random.default_rng(SEED + index)
        x = normalize(make_image(shape, kind, rng), kind)
        outputs = session.run(None, {inputs[0].name: x})
        entry = {
            "name": stem,
            "model": stem + ".onnx",
            "model_sha256": sha256(model_path),
            "preprocessing": kind,
            "inputs": [],
            "outputs": [],
        }
        in_file = f"{stem}.in.0.npy"
        np.save(os.path.join(root, in_file), np.ascontiguousarray(x))
        entry["inputs"].append({"name": inputs[0].name, "file": in_file, "shape": list(x.shape)})
        for k, (info, y) in enumerate(zip(session.get_outputs(), outputs)):
            y = np.ascontiguousarray(y, dtype=np.float32)
            out_file = f"{stem}.out.{k}.npy"
            np.save(os.path.join(root, out_file), y)
            entry["outputs"].append(
                {
                    "name": info.name,
                    "file": out_file,
                    "shape": list(y.shape),
                    "min": float(y.min()),
                    "max": float(y.max()),
                    "mean": float(y.mean()),
                }
            )
        manifest["models"].append(entry)
        summary = ", ".join(f"{o['name']} {o['shape']} in [{o['min']:.4g}, {o['max']:.4g}]" for o in entry["outputs"])
        print(f"{stem}: input {list(x.shape)} -> {summary}")
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
