#!/usr/bin/env python3
"""Measure the GPU figures that calibrate trainyard's analytic GPU model (crates/report, chips/<gpu>.toml).

Run on a machine with one NVIDIA GPU and PyTorch (CUDA):

    python3 scripts/gpu_calibrate.py OUT.json

It times, with CUDA events after warm-up (median of several runs):
  * bf16 and fp8 GEMMs (square 8192^3 and Llama-shaped prefill GEMMs)      -> efficiency.gemm / gemm_fp8
  * device-to-device copy and a read-only reduction                        -> hbm bandwidth ceiling
  * memory-bound GEMV/skinny GEMMs (decode shapes, batch 1 and 32)         -> efficiency.hbm_decode
  * scaled-dot-product attention, prefill (flash/cuDNN) and decode (GQA)   -> efficiency.attention_prefill
  * a Llama-3.1-8B-shaped decoder (random bf16 weights, own PyTorch code): one decode step (CUDA graph)
    at batch 1 and 32 with 2,176 cached tokens, and prefill of 2,048 tokens at batch 1 and 32
    -> end-to-end check of the analytic model's TTFT/TPOT.
Every section is independent; a failure is recorded and the others still run.
"""

import json
import math
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

DEV = "cuda"
RESULTS = {"sections": {}, "errors": {}}
OUT_PATH = sys.argv[1] if len(sys.argv) > 1 else "gpu_calibration.json"


def save():
    with open(OUT_PATH, "w") as f:
        json.dump(RESULTS, f, indent=1, sort_keys=True)


def time_ms(fn, min_total_ms=60.0, warmup=3, reps=5):
    """Median over `reps` of the mean time of a batch of calls sized to last >= min_total_ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    n = max(1, min(1000, int(math.ceil(min_total_ms / one))))
    samples = []
    for _ in range(reps):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / n)
    samples.sort()
    return samples[len(samples) // 2]


def section(name):
    def wrap(fn):
        t0 = time.time()
        try:
            RESULTS["sections"][name] = fn()
        except Exception:  # keep going: one broken section must not lose the others
            RESULTS["errors"][name] = traceback.format_exc()[-2000:]
        RESULTS["sections"].setdefault(name + "_wall_s", round(time.time() - t0, 2))
        print(f"[{name}] {time.time() - t0:.1f}s", json.dumps(RESULTS["sections"].get(name))[:600], flush=True)
        save()
        torch.cuda.empty_cache()
        return fn

    return wrap


props = torch.cuda.get_device_properties(0)
RESULTS["device"] = {
    "name": props.name,
    "sms": props.multi_processor_count,
    "memory_bytes": props.total_memory,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
}
print(RESULTS["device"], flush=True)
torch.manual_seed(0)

# Bring the clocks up before anything is timed: a few seconds of large GEMMs.
_a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
_t0 = time.time()
while time.time() - _t0 < 3.0:
    _a @ _a
torch.cuda.synchronize()
del _a


@section("gemm_bf16")
def _():
    out = {}
    for m, k, n in [(8192, 8192, 8192), (2048, 4096, 6144), (2048, 4096, 28672), (2048, 14336, 4096),
                    (65536, 4096, 28672), (65536, 14336, 4096)]:
        a = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=DEV, dtype=torch.bfloat16)
        ms = time_ms(lambda: a @ b)
        out[f"{m}x{k}x{n}"] = {"ms": ms, "tflops": 2 * m * k * n / ms / 1e9}
        del a, b
    return out


@section("gemm_fp8")
def _():
    out = {}
    for m, k, n in [(8192, 8192, 8192), (65536, 4096, 28672)]:
        a = torch.randn(m, k, device=DEV).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=DEV).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
        one = torch.tensor(1.0, device=DEV)
        ms = time_ms(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
        out[f"{m}x{k}x{n}"] = {"ms": ms, "tflops": 2 * m * k * n / ms / 1e9}
        del a, b
    return out


@section("hbm")
def _():
    n = 1 << 30  # 1 Gi float32 = 4 GiB
    x = torch.empty(n, device=DEV, dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    copy_ms = time_ms(lambda: y.copy_(x))
    read_ms = time_ms(lambda: x.sum())
    return {
        "copy_gbps_read_plus_write": 2 * 4 * n / copy_ms / 1e6,
        "sum_read_gbps": 4 * n / read_ms / 1e6,
    }


@section("decode_gemm")
def _():
    out = {}
    for batch in (1, 32):
        for k, n in [(4096, 28672), (14336, 4096), (8192, 57344), (28672, 8192), (4096, 128256)]:
            w = torch.randn(k, n, device=DEV, dtype=torch.bfloat16)
            x = torch.randn(batch, k, device=DEV, dtype=torch.bfloat16)
            ms = time_ms(lambda: x @ w)
            out[f"b{batch}_{k}x{n}"] = {"ms": ms, "weight_gbps": 2 * k * n / ms / 1e6}
            del w, x
    return out


@section("attention")
def _():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for b, h, s, d in [(1, 32, 4096, 128), (32, 32, 2048, 128)]:
        q = torch.randn(b, h, s, d, device=DEV, dtype=torch.bfloat16)
        kv = [torch.randn(b, h, s, d, device=DEV, dtype=torch.bfloat16) for _ in range(2)]
        for causal in (False, True):
            flops = 4 * b * h * s * s * d / (2 if causal else 1)
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                try:
                    with sdpa_kernel(backend):
                        ms = time_ms(lambda: F.scaled_dot_product_attention(q, kv[0], kv[1], is_causal=causal))
                    out[f"b{b}h{h}s{s}d{d}_{'causal' if causal else 'full'}_{backend.name}"] = {
                        "ms": ms,
                        "tflops": flops / ms / 1e9,
                    }
                except Exception as e:  # a backend may not support the shape
                    out[f"b{b}h{h}s{s}d{d}_{backend.name}_error"] = str(e)[:200]
        del q, kv
    for b in (1, 32):
        ctx = 2176
        q = torch.randn(b, 32, 1, 128, device=DEV, dtype=torch.bfloat16)
        k = torch.randn(b, 8, ctx, 128, device=DEV, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        out[f"decode_b{b}_ctx{ctx}_gqa8"] = {"ms": ms, "kv_gbps": 2 * k.numel() * 2 / ms / 1e6}
    return out


class Llama8B:
    """Llama-3.1-8B shapes with random weights; own minimal forward (rmsnorm, GQA attention, RoPE, SwiGLU)."""

    layers, hidden, inter, heads, kv_heads, head_dim, vocab = 32, 4096, 14336, 32, 8, 128, 128256

    def __init__(self):
        g = lambda *s: (torch.randn(*s, device=DEV, dtype=torch.bfloat16) * 0.02)  # noqa: E731
        self.embed = g(self.vocab, self.hidden)
        self.w = []
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        for _ in range(self.layers):
            self.w.append({
                "ln1": torch.ones(self.hidden, device=DEV, dtype=torch.bfloat16),
                "qkv": g(self.hidden, qkv),
                "o": g(self.heads * self.head_dim, self.hidden),
                "ln2": torch.ones(self.hidden, device=DEV, dtype=torch.bfloat16),
                "gu": g(self.hidden, 2 * self.inter),
                "down": g(self.inter, self.hidden),
            })
        self.norm = torch.ones(self.hidden, device=DEV, dtype=torch.bfloat16)
        self.lm_head = g(self.hidden, self.vocab)

    def rope(self, x, pos):
        # x [B, H, T, D]; pos [T]
        half = self.head_dim // 2
        inv = 1.0 / (500000.0 ** (torch.arange(half, device=DEV, dtype=torch.float32) / half))
        ang = pos.float()[:, None] * inv[None, :]
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def forward(self, tokens, kcache, vcache, start):
        """tokens [B, T]; caches [L][B, kvH, S, D]; writes positions start..start+T; returns next tokens [B]."""
        b, t = tokens.shape
        x = self.embed[tokens]
        pos = torch.arange(start, start + t, device=DEV)
        for li, w in enumerate(self.w):
            h = F.rms_norm(x, (self.hidden,), w["ln1"], 1e-5)
            qkv = h @ w["qkv"]
            q, k, v = qkv.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                 self.kv_heads * self.head_dim], dim=-1)
            q = self.rope(q.view(b, t, self.heads, self.head_dim).transpose(1, 2), pos)
            k = self.rope(k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2), pos)
            v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            kcache[li][:, :, start:start + t] = k
            vcache[li][:, :, start:start + t] = v
            kk, vv = kcache[li][:, :, :start + t], vcache[li][:, :, :start + t]
            a = F.scaled_dot_product_attention(q, kk, vv, is_causal=(t > 1), enable_gqa=True)
            x = x + a.transpose(1, 2).reshape(b, t, -1) @ w["o"]
            h = F.rms_norm(x, (self.hidden,), w["ln2"], 1e-5)
            gu = h @ w["gu"]
            g_, u = gu.chunk(2, dim=-1)
            x = x + (F.silu(g_) * u) @ w["down"]
        x = F.rms_norm(x[:, -1], (self.hidden,), self.norm, 1e-5)
        return (x @ self.lm_head).argmax(-1)


@section("llama8b")
def _():
    model = Llama8B()
    out = {"weights_bytes": sum(v.numel() * 2 for w in model.w for v in w.values())
           + 2 * model.embed.numel() * 2}
    in_len, out_len = 2048, 256
    ctx = in_len + out_len // 2  # decode step measured at the average context of a 2k-in/256-out request
    for batch in (1, 32):
        kc = [torch.zeros(batch, model.kv_heads, in_len + out_len, model.head_dim, device=DEV, dtype=torch.bfloat16)
              for _ in range(model.layers)]
        vc = [torch.zeros_like(c) for c in kc]
        prompt = torch.randint(0, model.vocab, (batch, in_len), device=DEV)
        with torch.no_grad():
            prefill_ms = time_ms(lambda: model.forward(prompt, kc, vc, 0), min_total_ms=1, warmup=1, reps=3)
            tok = torch.randint(0, model.vocab, (batch, 1), device=DEV)
            model.forward(tok, kc, vc, ctx)  # warm the decode path before capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                nxt = model.forward(tok, kc, vc, ctx)
            decode_ms = time_ms(lambda: graph.replay(), min_total_ms=100, warmup=3, reps=5)
            del graph, nxt
        out[f"b{batch}"] = {
            "prefill_ms": prefill_ms,
            "decode_step_ms": decode_ms,
            "decode_context": ctx,
            "decode_tokens_per_s": batch * 1000.0 / decode_ms,
        }
        del kc, vc
        torch.cuda.empty_cache()
    return out


RESULTS["finished"] = True
save()
print("wrote", OUT_PATH)
