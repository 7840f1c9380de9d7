package org.attn4j.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.PrefillPlan;
import org.attn4j.Tensor;

/** End-to-end cases through the public API, each checked against {@link ReferenceAttention}. */
public final class Runners {
    private Runners() {}

    /** Paged decode of a ragged batch. {@code in}: dtype of the K/V tensors handed to append. */
    public record DecodeCase(String name, int pageSize, int kvHeads, int group, int headDim, DType kv, DType q,
            DType out, DType in, int[] lengths, boolean lse, long seed) {
        @Override
        public String toString() {
            return name + " ps=" + pageSize + " kvH=" + kvHeads + " g=" + group + " d=" + headDim + " kv=" + kv
                    + " q=" + q + " out=" + out + " in=" + in + " lens=" + Arrays.toString(lengths)
                    + (lse ? " lse" : "") + " seed=" + seed;
        }
    }

    /**
     * Runs on {@code lib}'s device: on CUDA, K/V, q and the outputs go through device copies and
     * a case the CUDA kernels do not cover is skipped with the library's reason.
     */
    public static void decode(Attn4j lib, DecodeCase c) throws Throwable {
        int heads = c.kvHeads * c.group;
        int d = c.headDim;
        int batch = c.lengths.length;
        int pages = 4;
        for (int len : c.lengths) {
            pages += (len + c.pageSize - 1) / c.pageSize;
        }
        KvGen gen = new KvGen(c.seed, c.kvHeads, d);
        Random rnd = gen.random();
        try (Arena arena = Arena.ofConfined(); OnDevice dev = OnDevice.of(lib);
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(c.kvHeads).headDim(d).pageSize(c.pageSize)
                        .numPages(pages).dtype(c.kv).build();
                DecodePlan plan = TestDevice.skipIfUnsupportedOnCuda(lib, () -> Attention.decode(lib).forCache(cache)
                        .qoHeads(heads).qDType(c.q).outDType(c.out).maxBatch(batch).build())) {
            KvMirror m = new KvMirror(cache, gen, c.in, dev);
            int[] seqs = new int[batch];
            for (int i = 0; i < batch; i++) {
                seqs[i] = m.newSequence();
            }
            // a batched "prompt" append, then a few decode-style steps of one token per sequence
            int[] tail = new int[batch];
            int[] prompt = new int[batch];
            for (int i = 0; i < batch; i++) {
                tail[i] = Math.min(c.lengths[i] - 1, rnd.nextInt(4));
                prompt[i] = c.lengths[i] - tail[i];
            }
            m.append(arena, seqs, prompt, rnd.nextBoolean());
            for (int step = 0; step < 3; step++) {
                List<Integer> s = new ArrayList<>();
                for (int i = 0; i < batch; i++) {
                    if (tail[i] > 0) {
                        tail[i]--;
                        s.add(seqs[i]);
                    }
                }
                if (!s.isEmpty()) {
                    int[] ss = s.stream().mapToInt(Integer::intValue).toArray();
                    int[] ones = new int[ss.length];
                    Arrays.fill(ones, 1);
                    m.append(arena, ss, ones, step % 2 == 0);
                }
            }
            for (int i = 0; i < batch; i++) {
                assertEquals(c.lengths[i], cache.length(seqs[i]), "cache length of sequence " + i);
            }
            PageTable table;
            if (rnd.nextBoolean()) {
                table = cache.pageTable(seqs);
            } else {
                table = dev.pageTable(arena, batch + 1, pages);
                cache.fillPageTable(table, seqs);
            }
            float[] q = gen.queries(batch, heads);
            Tensor qt = dev.put(Tensor.ofFloats(arena, c.q, q, batch, heads, d));
            float[] qr = KvGen.round(q, c.q);
            Checks.Output out = Checks.Output.of(arena, c.out, batch, heads, d);
            Checks.Output lse = c.lse ? Checks.Output.of(arena, DType.F32, batch, heads) : null;
            Tensor outD = dev.put(out.tensor);
            Tensor lseD = lse == null ? null : dev.put(lse.tensor);
            double[] refOut = new double[batch * heads * d];
            double[] refLse = new double[batch * heads];
            for (int b = 0; b < batch; b++) {
                ReferenceAttention.Result r = ReferenceAttention.attend(qr, b * heads * d, m.keys(0, seqs[b]),
                        m.values(0, seqs[b]), 0, 1, c.lengths[b], heads, c.kvHeads, d, plan.scale(), false);
                System.arraycopy(r.out(), 0, refOut, b * heads * d, heads * d);
                System.arraycopy(r.lse(), 0, refLse, b * heads, heads);
            }
            double tol = Checks.tolerance(c.kv, c.q, c.out, c.in);
            for (int rep = 0; rep < 2; rep++) {
                out.poison();
                dev.refresh(out.tensor, outD);
                if (lse != null) {
                    lse.poison();
                    dev.refresh(lse.tensor, lseD);
                }
                plan.run(qt, cache, 0, table, outD, lseD);
                dev.get(outD, out.tensor);
                Checks.assertClose(out.read("out", c.seed), refOut, tol, c + " out (run " + rep + ")");
                if (lse != null) {
                    dev.get(lseD, lse.tensor);
                    Checks.assertClose(lse.read("lse", c.seed), refLse, tol, c + " lse (run " + rep + ")");
                }
            }
        }
    }

    /**
     * Decodes {@code seqs} of layer {@code layer} of the mirror's cache on {@code lib}'s device
     * (F32 q and out, {@code group} query heads per KV head) and compares with fp64 attention over
     * the mirror's copy of their K/V.
     */
    public static void decodeMatchesMirror(Attn4j lib, Arena arena, OnDevice dev, KvMirror m, int group, int layer,
            int[] seqs, long seed) {
        PagedKvCache cache = m.cache();
        int heads = cache.kvHeads() * group;
        int d = cache.headDim();
        int batch = seqs.length;
        try (DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(heads).qDType(DType.F32)
                .outDType(DType.F32).maxBatch(batch).build()) {
            float[] q = new KvGen(seed, cache.kvHeads(), d).queries(batch, heads);
            Checks.Output out = Checks.Output.of(arena, DType.F32, batch, heads, d);
            Checks.Output lse = Checks.Output.of(arena, DType.F32, batch, heads);
            Tensor outD = dev.put(out.tensor);
            Tensor lseD = dev.put(lse.tensor);
            plan.run(dev.put(Tensor.ofFloats(arena, DType.F32, q, batch, heads, d)), cache, layer,
                    cache.pageTable(seqs), outD, lseD);
            dev.get(outD, out.tensor);
            dev.get(lseD, lse.tensor);
            float[] got = out.read("out", seed);
            float[] gotLse = lse.read("lse", seed);
            for (int b = 0; b < batch; b++) {
                ReferenceAttention.Result r = ReferenceAttention.attend(q, b * heads * d, m.keys(layer, seqs[b]),
                        m.values(layer, seqs[b]), 0, 1, m.length(seqs[b]), heads, cache.kvHeads(), d, plan.scale(),
                        false);
                float[] gb = Arrays.copyOfRange(got, b * heads * d, (b + 1) * heads * d);
                float[] lb = Arrays.copyOfRange(gotLse, b * heads, (b + 1) * heads);
                double tol = Checks.tolerance(cache.dtype());
                Checks.assertClose(gb, r.out(), tol, "layer " + layer + " seq " + seqs[b] + " out (seed " + seed + ")");
                Checks.assertClose(lb, r.lse(), tol, "layer " + layer + " seq " + seqs[b] + " lse (seed " + seed + ")");
            }
        }
    }

    /** Prefill of a ragged batch against contiguous K/V. */
    public record PrefillCase(String name, int kvHeads, int group, int headDim, DType kv, DType q, DType out,
            boolean causal, int[] nq, int[] nkv, boolean lse, long seed) {
        @Override
        public String toString() {
            return name + " kvH=" + kvHeads + " g=" + group + " d=" + headDim + " kv=" + kv + " q=" + q + " out="
                    + out + (causal ? " causal" : "") + " nq=" + Arrays.toString(nq) + " nkv=" + Arrays.toString(nkv)
                    + (lse ? " lse" : "") + " seed=" + seed;
        }
    }

    /**
     * On {@code lib}'s device: on CUDA, q, K/V and the outputs go through device copies (the
     * indptr arrays stay on the host) and a case the CUDA kernel does not cover is skipped.
     */
    public static void prefill(Attn4j lib, PrefillCase c) throws Throwable {
        int heads = c.kvHeads * c.group;
        int d = c.headDim;
        int batch = c.nq.length;
        int[] qoIndptr = new int[batch + 1];
        int[] kvIndptr = new int[batch + 1];
        for (int i = 0; i < batch; i++) {
            qoIndptr[i + 1] = qoIndptr[i] + c.nq[i];
            kvIndptr[i + 1] = kvIndptr[i] + c.nkv[i];
        }
        int rows = qoIndptr[batch];
        int kvRows = kvIndptr[batch];
        KvGen gen = new KvGen(c.seed, c.kvHeads, d);
        float[] q = gen.queries(rows, heads);
        float[] k = new float[kvRows * c.kvHeads * d];
        float[] v = new float[kvRows * c.kvHeads * d];
        for (int i = 0; i < batch; i++) {
            System.arraycopy(gen.keys(0, c.nkv[i]), 0, k, kvIndptr[i] * c.kvHeads * d, c.nkv[i] * c.kvHeads * d);
            System.arraycopy(gen.values(c.nkv[i]), 0, v, kvIndptr[i] * c.kvHeads * d, c.nkv[i] * c.kvHeads * d);
        }
        try (Arena arena = Arena.ofConfined(); OnDevice dev = OnDevice.of(lib);
                PrefillPlan plan = TestDevice.skipIfUnsupportedOnCuda(lib, () -> Attention.prefill(lib).qoHeads(heads)
                        .kvHeads(c.kvHeads).headDim(d).qDType(c.q).kvDType(c.kv).outDType(c.out).causal(c.causal)
                        .maxBatch(batch).build())) {
            Tensor qt = dev.put(Tensor.ofFloats(arena, c.q, q, rows, heads, d));
            Tensor kt = dev.put(Tensor.ofFloats(arena, c.kv, k, kvRows, c.kvHeads, d));
            Tensor vt = dev.put(Tensor.ofFloats(arena, c.kv, v, kvRows, c.kvHeads, d));
            Tensor qi = Tensor.ofInts(arena, qoIndptr);
            Tensor ki = Tensor.ofInts(arena, kvIndptr);
            Checks.Output out = Checks.Output.of(arena, c.out, rows, heads, d);
            Checks.Output lse = c.lse ? Checks.Output.of(arena, DType.F32, rows, heads) : null;
            Tensor outD = dev.put(out.tensor);
            Tensor lseD = lse == null ? null : dev.put(lse.tensor);
            plan.run(qt, qi, kt, vt, ki, outD, lseD);
            dev.get(outD, out.tensor);
            if (lse != null) {
                dev.get(lseD, lse.tensor);
            }
            ReferenceAttention.Result r = ReferenceAttention.prefill(KvGen.round(q, c.q), qoIndptr,
                    KvGen.round(k, c.kv), KvGen.round(v, c.kv), kvIndptr, heads, c.kvHeads, d, plan.scale(), c.causal);
            double tol = Checks.tolerance(c.kv, c.q, c.out);
            Checks.assertClose(out.read("out", c.seed), r.out(), tol, c + " out");
            if (lse != null) {
                Checks.assertClose(lse.read("lse", c.seed), r.lse(), tol, c + " lse");
            }
        }
    }

    /**
     * Chunked prefill over a paged cache: each round appends the next chunk of every unfinished
     * sequence to the cache, then runs the paged prefill of that chunk's queries (causal).
     */
    public record ChunkedCase(String name, int pageSize, int kvHeads, int group, int headDim, DType kv, DType q,
            DType out, DType in, int[] lengths, int chunk, boolean lse, long seed) {
        @Override
        public String toString() {
            return name + " ps=" + pageSize + " kvH=" + kvHeads + " g=" + group + " d=" + headDim + " kv=" + kv
                    + " q=" + q + " out=" + out + " in=" + in + " lens=" + Arrays.toString(lengths) + " chunk="
                    + chunk + (lse ? " lse" : "") + " seed=" + seed;
        }
    }

    public static void chunkedPrefill(Attn4j lib, ChunkedCase c) throws Throwable {
        int heads = c.kvHeads * c.group;
        int d = c.headDim;
        int batch = c.lengths.length;
        int pages = 4;
        for (int len : c.lengths) {
            pages += (len + c.pageSize - 1) / c.pageSize;
        }
        KvGen gen = new KvGen(c.seed, c.kvHeads, d);
        Random rnd = gen.random();
        double tol = Checks.tolerance(c.kv, c.q, c.out, c.in);
        try (Arena arena = Arena.ofConfined(); OnDevice dev = OnDevice.of(lib);
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(c.kvHeads).headDim(d).pageSize(c.pageSize)
                        .numPages(pages).dtype(c.kv).build();
                PrefillPlan plan = TestDevice.skipIfUnsupportedOnCuda(lib, () -> Attention.prefill(lib).forCache(cache)
                        .qoHeads(heads).qDType(c.q).outDType(c.out).causal(true).maxBatch(batch).build())) {
            KvMirror m = new KvMirror(cache, gen, c.in, dev);
            int[] seqs = new int[batch];
            for (int i = 0; i < batch; i++) {
                seqs[i] = m.newSequence();
            }
            for (int round = 0;; round++) {
                List<Integer> idx = new ArrayList<>();
                List<Integer> cnt = new ArrayList<>();
                for (int i = 0; i < batch; i++) {
                    int rem = c.lengths[i] - m.length(seqs[i]);
                    if (rem > 0) {
                        idx.add(i);
                        cnt.add(Math.min(rem, Math.max(1, c.chunk + rnd.nextInt(c.chunk / 2 + 1) - c.chunk / 4)));
                    }
                }
                if (idx.isEmpty()) {
                    break;
                }
                int n = idx.size();
                int[] ss = new int[n];
                int[] counts = new int[n];
                int[] qoIndptr = new int[n + 1];
                for (int j = 0; j < n; j++) {
                    ss[j] = seqs[idx.get(j)];
                    counts[j] = cnt.get(j);
                    qoIndptr[j + 1] = qoIndptr[j] + counts[j];
                }
                PagedKvCache.Reservation r = m.append(arena, ss, counts, round % 2 == 0);
                PageTable table = round % 3 == 1 ? cache.pageTable(ss) : r.pageTable();
                int rows = qoIndptr[n];
                float[] q = gen.queries(rows, heads);
                float[] qr = KvGen.round(q, c.q);
                Tensor qt = dev.put(Tensor.ofFloats(arena, c.q, q, rows, heads, d));
                Checks.Output out = Checks.Output.of(arena, c.out, rows, heads, d);
                Checks.Output lse = c.lse ? Checks.Output.of(arena, DType.F32, rows, heads) : null;
                Tensor outD = dev.put(out.tensor);
                Tensor lseD = lse == null ? null : dev.put(lse.tensor);
                plan.run(qt, Tensor.ofInts(arena, qoIndptr), cache, 0, table, outD, lseD);
                dev.get(outD, out.tensor);
                if (lse != null) {
                    dev.get(lseD, lse.tensor);
                }
                double[] refOut = new double[rows * heads * d];
                double[] refLse = new double[rows * heads];
                for (int j = 0; j < n; j++) {
                    int len = m.length(ss[j]);
                    ReferenceAttention.Result ref = ReferenceAttention.attend(qr, qoIndptr[j] * heads * d,
                            m.keys(0, ss[j]), m.values(0, ss[j]), 0, counts[j], len, heads, c.kvHeads, d,
                            plan.scale(), true);
                    System.arraycopy(ref.out(), 0, refOut, qoIndptr[j] * heads * d, ref.out().length);
                    System.arraycopy(ref.lse(), 0, refLse, qoIndptr[j] * heads, ref.lse().length);
                }
                Checks.assertClose(out.read("out", c.seed), refOut, tol, c + " round " + round + " out");
                if (lse != null) {
                    Checks.assertClose(lse.read("lse", c.seed), refLse, tol, c + " round " + round + " lse");
                }
            }
        }
    }
}
