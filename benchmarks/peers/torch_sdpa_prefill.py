#!/usr/bin/env python3
"""PyTorch SDPA prefill peer for the CUDA prefill benchmark (run on the GPU machine).

Reads the rows of native/tests/bench_cuda_prefill.cu (--attn4j bench.json) and times PyTorch's
scaled_dot_product_attention on the same shapes in the same run: q [B, hq, L, D], contiguous K/V
[B, hkv, L, D] (GQA through enable_gqa=True; a backend that rejects it is retried with
repeat_interleave'd K/V and the row says so), is_causal as in the row (same-length q and K/V, so
top-left and bottom-right causal agree). Backends: FlashAttention (SDPBackend.FLASH_ATTENTION,
FlashAttention-2) and cuDNN (SDPBackend.CUDNN_ATTENTION). Rows of unequal lengths (ragged) run
as B = 1 per sequence back to back, which is how SDPA would serve them without padding. The paged
attn4j row is compared with contiguous K/V for PyTorch (SDPA has no paged input).
Timing: 3 warm-up calls, then per call a pair of CUDA events, median; K/V sets rotate (>= 2,
>= 512 MB in all) as in the attn4j harness. TFLOP/s: 4 * L * L * D * hq per sequence, halved when
causal (the FlashAttention convention, the same formula as the attn4j harness).

  python3 torch_sdpa_prefill.py --attn4j bench.json [--reps 10] [--out-json r.json] [--out-md r.md]
"""
import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def time_backend(backend, row, reps):
    hq, hkv, d, causal = row["hq"], row["hkv"], row["d"], row["causal"]
    dtype = torch.float16 if row["dtype"] == "f16" else torch.bfloat16
    lens = row["lens"]
    kv_bytes = sum(lens) * hkv * d * 2 * 2
    nrot = max(2, math.ceil(512e6 / kv_bytes))
    groups = {}
    for L in lens:
        groups[L] = groups.get(L, 0) + 1
    if len(groups) == 1:  # one call over the whole batch
        calls = [(lens[0], len(lens))]
    else:  # ragged: one call per sequence
        calls = [(L, 1) for L in lens]
    qs = {(L, b): torch.randn(b, hq, L, d, device="cuda", dtype=dtype) for L, b in set(calls)}
    kvs = {(L, b): [(torch.randn(b, hkv, L, d, device="cuda", dtype=dtype),
                     torch.randn(b, hkv, L, d, device="cuda", dtype=dtype)) for _ in range(nrot)]
           for L, b in set(calls)}
    mode = "enable_gqa" if hq != hkv else "mha"

    def one(L, b, i):
        k, v = kvs[(L, b)][i % nrot]
        if mode == "repeat_interleave":
            k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
        return F.scaled_dot_product_attention(qs[(L, b)], k, v, is_causal=causal,
                                              enable_gqa=(mode == "enable_gqa"))

    def step(i):
        for L, b in calls:
            one(L, b, i)

    with sdpa_kernel([backend]):
        try:
            step(0)
        except Exception as e:  # noqa: BLE001
            if mode != "enable_gqa":
                return {"error": str(e).splitlines()[0][:200]}
            first = str(e).splitlines()[0][:200]
            mode = "repeat_interleave"
            try:
                step(0)
            except Exception as e2:  # noqa: BLE001
                return {"error": first + " | " + str(e2).splitlines()[0][:200]}
        for i in range(3):
            step(i)
        torch.cuda.synchronize()
        times = []
        for i in range(reps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            step(i)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1))
    ms = statistics.median(times)
    return {"ms_median": ms, "ms_min": min(times), "tflops": row["flops"] / (ms * 1e-3) / 1e12, "gqa": mode,
            "calls": len(calls)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn4j", required=True)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    args = ap.parse_args()
    ours = json.load(open(args.attn4j))
    rows = []
    for row in ours["rows"]:
        peers = {name: time_backend(b, row, args.reps) for name, b in BACKENDS.items()}
        rows.append({"attn4j": row, "torch": peers})
        print(row["name"], f"attn4j {row['tflops']:.1f}",
              " ".join(f"{n} {p.get('tflops', float('nan')):.1f}" for n, p in peers.items()), flush=True)
    result = {"device": ours["device"], "torch": torch.__version__, "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version(), "rows": rows}
    if args.out_json:
        json.dump(result, open(args.out_json, "w"), indent=1)
    if args.out_md:
        lines = [f"# CUDA prefill vs PyTorch SDPA ({ours['device']}, torch {torch.__version__}, "
                 f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})", "",
                 "TFLOP/s = 4 * n_q * n_kv * D * hq (halved when causal) / median time; CUDA events, same run. "
                 "attn4j timed around attn4j_prefill_run (host planning included).", "",
                 "| config | attn4j ms | attn4j TFLOP/s | flash TFLOP/s | cuDNN TFLOP/s | attn4j / flash | attn4j / cuDNN |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            a, t = r["attn4j"], r["torch"]

            def cell(p):
                return f"{p['tflops']:.1f}" + (" (repeat)" if p.get("gqa") == "repeat_interleave" else "") \
                    if "tflops" in p else "error"

            def ratio(p):
                return f"{a['tflops'] / p['tflops']:.2f}x" if "tflops" in p else "-"
            lines.append(f"| {a['name']} | {a['ms_median']:.2f} | {a['tflops']:.1f} | {cell(t['flash'])} | "
                         f"{cell(t['cudnn'])} | {ratio(t['flash'])} | {ratio(t['cudnn'])} |")
        errors = [f"- {r['attn4j']['name']} {n}: {p['error']}" for r in rows for n, p in r["torch"].items()
                  if "error" in p]
        if errors:
            lines += ["", "Backend errors:"] + errors
        open(args.out_md, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
