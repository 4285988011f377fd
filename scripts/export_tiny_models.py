#!/usr/bin/env python3
"""Exports three tiny models with random weights (fixed seed) to ONNX, for the tests and
demos of `trainyard interpret` / `trainyard run`:

  models/tiny-gpt2.onnx   GPT-2-style decoder: token + position embeddings, pre-LayerNorm
                          blocks with causal multi-head attention and a GELU MLP, tied head.
  models/tiny-llama.onnx  Llama-style decoder: RMSNorm, rotary embeddings, grouped-query
                          causal attention, SwiGLU MLP, untied head.
  models/tiny-cnn.onnx    A small residual CNN: conv/batch-norm/ReLU, max-pool, two residual
                          blocks, global average pool, linear classifier.

Beside each model it writes one sample input and the matching PyTorch output as .npy:
  models/<name>.in.<input>.npy and models/<name>.out.<output>.npy

Requirements: python3 with torch (CPU is enough), numpy and onnx. Run from anywhere:
  python3 scripts/export_tiny_models.py [--out-dir models] [--opset 17]
"""

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 1234
VOCAB = 256
SEQ = 16


class GptBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q = q.reshape(b, t, h, d // h).transpose(1, 2)
        k = k.reshape(b, t, h, d // h).transpose(1, 2)
        v = v.reshape(b, t, h, d // h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
        att = att + mask
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGpt2(nn.Module):
    def __init__(self, d=64, heads=4, layers=2):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(SEQ, d)
        self.blocks = nn.ModuleList([GptBlock(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        causal = torch.full((SEQ, SEQ), float("-inf")).triu(1)
        self.register_buffer("mask", causal)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        pos = torch.arange(t)
        x = self.tok(input_ids) + self.pos(pos)
        mask = self.mask[:t, :t]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln(x) @ self.tok.weight.t()


class RmsNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        self.h, self.kvh, self.hd = heads, kv_heads, d // heads
        self.norm1 = RmsNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.norm2 = RmsNorm(d)
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        y = self.norm1(x)
        q = self.q(y).reshape(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(y).reshape(b, t, self.kvh, self.hd).transpose(1, 2)
        v = self.v(y).reshape(b, t, self.kvh, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Grouped-query heads, spelled with Unsqueeze/Expand/Reshape (as repeat_interleave).
        rep = self.h // self.kvh
        k = k[:, :, None].expand(b, self.kvh, rep, t, self.hd).reshape(b, self.h, t, self.hd)
        v = v[:, :, None].expand(b, self.kvh, rep, t, self.hd).reshape(b, self.h, t, self.hd)
        att = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(self.hd) + mask, dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        y = self.norm2(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class TinyLlama(nn.Module):
    def __init__(self, d=64, heads=4, kv_heads=2, hidden=128, layers=2):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList([LlamaBlock(d, heads, kv_heads, hidden) for _ in range(layers)])
        self.norm = RmsNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        freqs = torch.outer(torch.arange(SEQ).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())
        self.register_buffer("mask", torch.full((SEQ, SEQ), float("-inf")).triu(1))

    def forward(self, input_ids):
        t = input_ids.shape[1]
        x = self.emb(input_ids)
        cos, sin, mask = self.cos[:t], self.sin[:t], self.mask[:t, :t]
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        return self.head(self.norm(x))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(x + self.b2(self.c2(y)))


class TinyCnn(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=1, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.blocks = nn.Sequential(Residual(16), Residual(16))
        self.head = nn.Linear(16, classes)

    def forward(self, image):
        x = self.blocks(self.stem(image))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomize_norms(model, gen):
    """Gives batch-norm statistics non-trivial values so that the export tests them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def export(model, name, inputs, input_names, output_names, out_dir, opset):
    model.eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    with torch.no_grad():
        outputs = model(*inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        kwargs = dict(input_names=input_names, output_names=output_names, opset_version=opset, do_constant_folding=True)
        try:
            torch.onnx.export(model, tuple(inputs), path, dynamo=False, **kwargs)
        except TypeError:  # torch versions without the `dynamo` switch
            torch.onnx.export(model, tuple(inputs), path, **kwargs)
    written = [path]
    for n, t in zip(input_names, inputs):
        p = os.path.join(out_dir, f"{name}.in.{n}.npy")
        np.save(p, t.numpy())
        written.append(p)
    for n, t in zip(output_names, outputs):
        p = os.path.join(out_dir, f"{name}.out.{n}.npy")
        np.save(p, t.numpy())
        written.append(p)
    try:
        import onnx

        onnx.checker.check_model(onnx.load(path))
    except ImportError:
        print("note: the onnx package is missing; the exported model was not checked", file=sys.stderr)
    for p in written:
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out-dir", default=os.path.join(here, "..", "models"))
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    if args.opset < 17:
        sys.exit("--opset must be 17 or newer (LayerNormalization)")
    os.makedirs(args.out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=gen, dtype=torch.int64)

    export(TinyGpt2(), "tiny-gpt2", [ids], ["input_ids"], ["logits"], args.out_dir, args.opset)
    torch.manual_seed(SEED + 1)
    export(TinyLlama(), "tiny-llama", [ids], ["input_ids"], ["logits"], args.out_dir, args.opset)
    torch.manual_seed(SEED + 2)
    cnn = TinyCnn()
    randomize_norms(cnn, gen)
    image = torch.rand((1, 3, 32, 32), generator=gen)
    export(cnn, "tiny-cnn", [image], ["image"], ["logits"], args.out_dir, args.opset)


if __name__ == "__main__":
    main()
