package org.attn4j.tests;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

import org.attn4j.Attention;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.attn4j.testing.KvGen;
import org.attn4j.testing.KvMirror;
import org.attn4j.testing.ReferenceAttention;
import org.junit.jupiter.api.Test;

/** Decode as engines use it: step loops with reused tables, raw page tables, strided q/out. */
class DecodeScenariosTest extends LibFixture {

    /** 24 steps of append-one-token-then-decode, reusing plan, table and output buffers. */
    @Test
    void stepLoopReusesPlanTableAndBuffers() {
        long seed = Checks.baseSeed() + 40;
        int kvHeads = 2;
        int heads = 8;
        int d = 128;
        int batch = 3;
        try (Arena arena = Arena.ofConfined();
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(kvHeads).headDim(d).pageSize(16).numPages(64)
                        .dtype(DType.BF16).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(heads).qDType(DType.BF16)
                        .outDType(DType.F32).maxBatch(4).build()) {
            KvGen gen = new KvGen(seed, kvHeads, d);
            KvMirror m = new KvMirror(cache, gen, DType.BF16);
            int[] seqs = {m.newSequence(), m.newSequence(), m.newSequence()};
            m.append(arena, seqs, new int[] {13, 1, 47}, true);
            PageTable table = PageTable.allocate(arena, 4, 64);
            Tensor q = Tensor.allocate(arena, DType.BF16, batch, heads, d);
            Checks.Output out = Checks.Output.of(arena, DType.F32, batch, heads, d);
            Checks.Output lse = Checks.Output.of(arena, DType.F32, batch, heads);
            for (int step = 0; step < 24; step++) {
                m.append(arena, seqs, new int[] {1, 1, 1}, true);
                cache.fillPageTable(table, seqs);
                float[] qf = gen.queries(batch, heads);
                for (int i = 0; i < qf.length; i++) {
                    q.setFlat(i, qf[i]);
                }
                float[] qr = KvGen.round(qf, DType.BF16);
                out.poison();
                lse.poison();
                plan.run(q, cache, 0, table, out.tensor, lse.tensor);
                float[] got = out.read("out", seed);
                float[] gotLse = lse.read("lse", seed);
                for (int b = 0; b < batch; b++) {
                    ReferenceAttention.Result r = ReferenceAttention.attend(qr, b * heads * d, m.keys(0, seqs[b]),
                            m.values(0, seqs[b]), 0, 1, m.length(seqs[b]), heads, kvHeads, d, plan.scale(), false);
                    Checks.assertClose(Arrays.copyOfRange(got, b * heads * d, (b + 1) * heads * d), r.out(), 1e-2,
                            "step " + step + " seq " + b + " (seed " + seed + ")");
                    Checks.assertClose(Arrays.copyOfRange(gotLse, b * heads, (b + 1) * heads), r.lse(), 1e-2,
                            "step " + step + " seq " + b + " lse (seed " + seed + ")");
                }
            }
        }
    }

    /**
     * Hand-made CSR tables over a cache's pages: permuted page order, one page in two batch
     * entries, a prefix of a sequence; checked with the page-table reference on a mirror slab.
     */
    @Test
    void rawPageTablesWithPermutedAndSharedPages() {
        long seed = Checks.baseSeed() + 41;
        int kvHeads = 2;
        int heads = 4;
        int d = 64;
        int ps = 16;
        int numPages = 8;
        try (Arena arena = Arena.ofConfined();
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(kvHeads).headDim(d).pageSize(ps)
                        .numPages(numPages).dtype(DType.F32).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(heads).qDType(DType.F32)
                        .outDType(DType.F32).maxBatch(4).build()) {
            KvGen gen = new KvGen(seed, kvHeads, d);
            KvMirror m = new KvMirror(cache, gen, DType.F32);
            int s = m.newSequence();
            m.append(arena, new int[] {s}, new int[] {numPages * ps}, true); // fills every page
            int[] pages = cache.pageTable(s).indices();
            // mirror slab in HND layout
            int row = kvHeads * d;
            float[] kAll = m.keys(0, s);
            float[] vAll = m.values(0, s);
            float[] kSlab = new float[numPages * row * ps];
            float[] vSlab = new float[numPages * row * ps];
            for (int t = 0; t < numPages * ps; t++) {
                int page = pages[t / ps];
                for (int h = 0; h < kvHeads; h++) {
                    int dst = ((page * kvHeads + h) * ps + t % ps) * d;
                    System.arraycopy(kAll, t * row + h * d, kSlab, dst, d);
                    System.arraycopy(vAll, t * row + h * d, vSlab, dst, d);
                }
            }
            int[] indptr = {0, 3, 4, 6, 9};
            int[] indices = {pages[5], pages[2], pages[7], pages[0], pages[2], pages[6], pages[1], pages[3], pages[4]};
            int[] last = {7, 16, 1, 9};
            PageTable table = PageTable.of(arena, indptr, indices, last);
            float[] q = gen.queries(4, heads);
            Checks.Output out = Checks.Output.of(arena, DType.F32, 4, heads, d);
            Checks.Output lse = Checks.Output.of(arena, DType.F32, 4, heads);
            plan.run(Tensor.ofFloats(arena, DType.F32, q, 4, heads, d), cache, 0, table, out.tensor, lse.tensor);
            ReferenceAttention.Result r = ReferenceAttention.decodePaged(q, kSlab, vSlab, indptr, indices, last, ps,
                    heads, kvHeads, d, plan.scale());
            Checks.assertClose(out.read("out", seed), r.out(), 1e-5, "raw table out (seed " + seed + ")");
            Checks.assertClose(lse.read("lse", seed), r.lse(), 1e-5, "raw table lse (seed " + seed + ")");
        }
    }

    /** q sliced out of a fused QKV buffer, out with padded rows: any positive outer strides. */
    @Test
    void stridedQueryAndOutput() {
        long seed = Checks.baseSeed() + 42;
        int kvHeads = 2;
        int heads = 8;
        int d = 64;
        int batch = 3;
        try (Arena arena = Arena.ofConfined();
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(kvHeads).headDim(d).pageSize(16).numPages(32)
                        .dtype(DType.F32).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(heads).qDType(DType.F32)
                        .outDType(DType.F32).maxBatch(batch).build()) {
            KvGen gen = new KvGen(seed, kvHeads, d);
            KvMirror m = new KvMirror(cache, gen, DType.F32);
            int[] seqs = {m.newSequence(), m.newSequence(), m.newSequence()};
            m.append(arena, seqs, new int[] {50, 16, 3}, true);
            int fused = (heads + 2 * kvHeads) * d; // one token's q | k | v
            float[] q = gen.queries(batch, heads);
            MemorySegment qkv = arena.allocate((long) batch * fused * 4, 64);
            Tensor qt = Tensor.of(qkv, DType.F32, new long[] {batch, heads, d}, new long[] {fused, d, 1});
            for (int i = 0; i < q.length; i++) {
                qt.setFlat(i, q[i]);
            }
            Checks.Output out = Checks.Output.strided(arena, DType.F32, new long[] {batch, heads, d},
                    new long[] {heads * (d + 8) + 32, d + 8, 1});
            plan.run(qt, cache, 0, cache.pageTable(seqs), out.tensor);
            float[] got = out.read("out", seed);
            double[] ref = new double[batch * heads * d];
            for (int b = 0; b < batch; b++) {
                ReferenceAttention.Result r = ReferenceAttention.attend(q, b * heads * d, m.keys(0, seqs[b]),
                        m.values(0, seqs[b]), 0, 1, m.length(seqs[b]), heads, kvHeads, d, plan.scale(), false);
                System.arraycopy(r.out(), 0, ref, b * heads * d, heads * d);
            }
            Checks.assertClose(got, ref, 1e-5, "strided q/out (seed " + seed + ")");
        }
    }

    /** A non-default softmax scale reaches the kernel. */
    @Test
    void customScale() {
        long seed = Checks.baseSeed() + 43;
        try (Arena arena = Arena.ofConfined();
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(1).headDim(64).pageSize(16).numPages(8)
                        .dtype(DType.F32).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(2).qDType(DType.F32)
                        .outDType(DType.F32).scale(0.3f).build()) {
            KvGen gen = new KvGen(seed, 1, 64);
            KvMirror m = new KvMirror(cache, gen, DType.F32);
            int s = m.newSequence();
            m.append(arena, new int[] {s}, new int[] {70}, true);
            float[] q = gen.queries(1, 2);
            Checks.Output out = Checks.Output.of(arena, DType.F32, 1, 2, 64);
            Checks.Output lse = Checks.Output.of(arena, DType.F32, 1, 2);
            plan.run(Tensor.ofFloats(arena, DType.F32, q, 1, 2, 64), cache, 0, cache.pageTable(s), out.tensor,
                    lse.tensor);
            ReferenceAttention.Result r = ReferenceAttention.attend(q, 0, m.keys(0, s), m.values(0, s), 0, 1, 70, 2,
                    1, 64, 0.3f, false);
            Checks.assertClose(out.read("out", seed), r.out(), 1e-5, "scale 0.3 out (seed " + seed + ")");
            Checks.assertClose(lse.read("lse", seed), r.lse(), 1e-5, "scale 0.3 lse (seed " + seed + ")");
        }
    }
}
