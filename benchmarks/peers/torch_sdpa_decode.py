#!/usr/bin/env python3
"""PyTorch SDPA decode peer for the CUDA decode benchmark (run on the GPU machine).

Shapes match native/tests/bench_cuda_decode.cu: q [b, 32, 1, 128], dense contiguous K/V
[b, 8, L, 128], all BF16, scale 1/sqrt(128). GQA is expressed with enable_gqa=True (no K/V
copies, so each KV byte is read once); a backend that rejects it is retried with
repeat_interleave'd K/V (4x the bytes) and the row says so ("gqa": "repeat_interleave").
Backends: cuDNN (SDPBackend.CUDNN_ATTENTION) and FlashAttention (SDPBackend.FLASH_ATTENTION).
Timing: warm-up, then per call a pair of CUDA events; median. Also a CUDA graph of 20 calls
(median replay time / 20), which removes host launch gaps for both sides. K/V sets rotate (>= 2, >= 256 MB in
all) so L2 does not hold them. Effective bandwidth counts the 8-head K+V bytes in both modes.

  python3 torch_sdpa_decode.py [--shapes 1:4096,...] [--reps 200] [--attn4j bench.json]
                               [--out-json results.json] [--out-md results.md]
With --attn4j, the attn4j rows (from bench_cuda_decode --json) are merged into one table.
"""
import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HQO, HKV, D = 32, 8, 128


def time_backend(backend, b, L, reps):
    kv_bytes = b * L * HKV * D * 2 * 2
    nrot = max(2, math.ceil(256e6 / kv_bytes))
    q = torch.randn(b, HQO, 1, D, device="cuda", dtype=torch.bfloat16)
    ks = [torch.randn(b, HKV, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(nrot)]
    vs = [torch.randn(b, HKV, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(nrot)]
    mode = "enable_gqa"

    def call(i):
        if mode == "enable_gqa":
            return F.scaled_dot_product_attention(q, ks[i % nrot], vs[i % nrot], enable_gqa=True)
        return F.scaled_dot_product_attention(q, ks[i % nrot], vs[i % nrot])

    with sdpa_kernel([backend]):
        try:
            ref = call(0)
        except Exception as e:  # noqa: BLE001 - fall back to explicit K/V repetition
            first_error = str(e).splitlines()[0][:200]
            mode = "repeat_interleave"
            ks = [k.repeat_interleave(HQO // HKV, dim=1) for k in ks]
            vs = [v.repeat_interleave(HQO // HKV, dim=1) for v in vs]
            try:
                ref = call(0)
            except Exception as e2:  # noqa: BLE001
                return {"error": first_error + " | " + str(e2).splitlines()[0][:200]}
        # correctness spot check against the math path in float32
        kk = ks[0].float() if mode == "enable_gqa" else ks[0][:, :: HQO // HKV].float()
        vv = vs[0].float() if mode == "enable_gqa" else vs[0][:, :: HQO // HKV].float()
        kk = kk.repeat_interleave(HQO // HKV, dim=1)
        vv = vv.repeat_interleave(HQO // HKV, dim=1)
        s = (q.float() @ kk.transpose(-1, -2)) / math.sqrt(D)
        exp = torch.softmax(s, -1) @ vv
        rel = ((ref.float() - exp).norm() / exp.norm()).item()
        for i in range(20):
            call(i)
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for i in range(reps):
            ev[i][0].record()
            call(i)
            ev[i][1].record()
        torch.cuda.synchronize()
        t = [a.elapsed_time(c) * 1e3 for a, c in ev]
        # CUDA graph of 20 calls (rotating K/V): per-call time without host launch gaps
        graph_us = None
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for i in range(3):
                    call(i)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for i in range(20):
                    call(i)
            for _ in range(3):
                g.replay()
            torch.cuda.synchronize()
            gev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(20)]
            for a, c in gev:
                a.record()
                g.replay()
                c.record()
            torch.cuda.synchronize()
            graph_us = statistics.median([a.elapsed_time(c) * 1e3 / 20 for a, c in gev])
        except Exception as e:  # noqa: BLE001
            print("graph capture failed:", str(e).splitlines()[0][:200])
    med = statistics.median(t)
    return {"gqa": mode, "median_us": round(med, 2), "min_us": round(min(t), 2),
            "tb_s": round(kv_bytes / (med * 1e-6) / 1e12, 4), "rel_err_vs_fp32": rel,
            "graph_us": round(graph_us, 2) if graph_us else None,
            "graph_tb_s": round(kv_bytes / (graph_us * 1e-6) / 1e12, 4) if graph_us else None,
            "rotating_buffers": nrot}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1:4096,1:32768,1:131072,64:4096,16:16384,128:1024")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--attn4j")
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split(":")) for s in args.shapes.split(",")]
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    rows = []
    for b, L in shapes:
        row = {"batch": b, "seq_len": L, "kv_bytes": b * L * HKV * D * 4}
        for name, be in backends.items():
            row[name] = time_backend(be, b, L, args.reps)
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "peers": rows}
    if args.attn4j:
        with open(args.attn4j) as f:
            ours = json.load(f)
        result["attn4j"] = ours
        if args.out_json:
            with open(args.out_json, "w") as f:
                json.dump(result, f, indent=2)
        by = {(r["batch"], r["seq_len"]): r for r in ours["results"]}
        md = [f"# CUDA paged decode vs PyTorch SDPA ({result['device']}, same run)", "",
              f"32 q / 8 kv heads, head_dim 128, BF16. attn4j: paged KV (page {ours['page_size']}, "
              f"shuffled pages); PyTorch {torch.__version__}: dense contiguous K/V, enable_gqa. "
              f"Effective TB/s = K+V bytes / median time. D2D copy: {ours['copy_tb_s']:.2f} TB/s.", "",
              "Per-call: CUDA events around each call (includes host launch gaps for short calls). "
              "Graph: CUDA graph of 20 calls, time per call." +
              (f" attn4j columns: {ours['source']} (compare graph with graph)." if "source" in ours else ""), "",
              "| batch x tokens | attn4j us | attn4j TB/s | cuDNN us | cuDNN TB/s | flash us | flash TB/s | cuDNN / attn4j time |"
              " attn4j graph us (TB/s) | cuDNN graph us (TB/s) | flash graph us (TB/s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            o = by.get((r["batch"], r["seq_len"]))
            c, fl = r["cudnn"], r["flash"]

            def f(x, k):
                return f"{x[k]:.1f}" if k in x and k == "median_us" else (f"{x[k]:.2f}" if k in x else "n/a")
            ratio = f"{c['median_us'] / o['median_us']:.2f}x" if o and "median_us" in c else "n/a"
            def gr(x, us, tb):
                return f"{x[us]:.1f} ({x[tb]:.2f})" if x and x.get(us) else "n/a"
            md.append(f"| {r['batch']} x {r['seq_len']} | {f(o or {}, 'median_us')} | {f(o or {}, 'tb_s')} | "
                      f"{f(c, 'median_us')} | {f(c, 'tb_s')} | {f(fl, 'median_us')} | {f(fl, 'tb_s')} | {ratio} | "
                      f"{gr(o, 'graph_us', 'graph_tb_s')} | {gr(c, 'graph_us', 'graph_tb_s')} | "
                      f"{gr(fl, 'graph_us', 'graph_tb_s')} |")
        text = "\n".join(md) + "\n"
        print(text)
        if args.out_md:
            with open(args.out_md, "w") as f:
                f.write(text)
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
