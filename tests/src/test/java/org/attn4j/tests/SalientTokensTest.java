package org.attn4j.tests;

import static org.attn4j.testing.Checks.assertAttn4j;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.List;

import org.attn4j.Attention;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.KvFormat;
import org.attn4j.PagedKvCache;
import org.attn4j.Rotation;
import org.attn4j.Status;
import org.attn4j.Tensor;
import org.attn4j.TieredKvCache;
import org.attn4j.quant.QuantAccuracy;
import org.attn4j.quant.SyntheticKv;
import org.attn4j.testing.Checks;
import org.attn4j.testing.ReferenceAttention;
import org.junit.jupiter.api.Test;

/**
 * Salient tokens of a {@link TieredKvCache} (ZipCache-style): a decode loop whose own queries are
 * the probes, a prompt whose last queries are given with {@code observe}, the budget, forks, and
 * bad input. Outputs are checked against fp64 attention over the unquantized K/V: with INT8 the
 * three segments must together hold every token exactly once; with INT2 the salient tokens must
 * remove most of the error the retrieval-heavy synthetic layer shows.
 */
class SalientTokensTest extends LibFixture {
    private static final int HEADS = 8;
    private static final int KVH = 2;
    private static final int D = 64;
    private static final int PS = 16;
    private static final int SINKS = 16;
    private static final int WINDOW = 32;
    private static final long PROBE_SALT = 0x5A11E27L;

    private TieredKvCache.Builder tiered(KvFormat format) {
        return TieredKvCache.builder(lib).kvHeads(KVH).headDim(D).pageSize(PS).numPages(16, 64).format(format)
                .sinks(SINKS).window(WINDOW);
    }

    private DecodePlan plan(TieredKvCache cache, int maxBatch) {
        return Attention.decode(lib).forCache(cache).qoHeads(HEADS).qDType(DType.F32).outDType(DType.F32)
                .maxBatch(maxBatch).build();
    }

    /**
     * Grows {@code cache} token by token to {@code s.tokens()}, decoding each step with a query of
     * the layer's statistics at that position (the probes), and returns the last step's output.
     */
    private float[] decodeLoop(Arena arena, TieredKvCache cache, DecodePlan plan, SyntheticKv s, int seq, long seed) {
        int[] seqs = {seq};
        int[] one = {1};
        int stride = KVH * D;
        PagedKvCache.Reservation r = cache.newReservation(1, 16);
        TieredKvCache.Tables tables = cache.newTables(1, 64);
        Tensor q = Tensor.allocate(arena, DType.F32, 1, HEADS, D);
        Checks.Output out = Checks.Output.of(arena, DType.F32, 1, HEADS, D);
        float[] got = null;
        for (int t = 0; t < s.tokens(); t++) {
            cache.reserve(seqs, one, r);
            cache.write(0, r, Tensor.ofFloats(arena, DType.F32, Arrays.copyOfRange(s.k(), t * stride, (t + 1) * stride),
                    1, KVH, D), Tensor.ofFloats(arena, DType.F32,
                    Arrays.copyOfRange(s.v(), t * stride, (t + 1) * stride), 1, KVH, D));
            float[] qt = t == s.tokens() - 1 ? s.q() : s.queriesAt(new long[] {t + 1}, PROBE_SALT + t);
            for (int i = 0; i < qt.length; i++) {
                q.setFlat(i, qt[i]);
            }
            cache.fillTables(tables, seqs);
            out.tensor.fill(Float.NaN);
            plan.run(q, cache, 0, tables, out.tensor, null);
            long middle = cache.quantizedLength(seq) + cache.salientLength(seq);
            assertEquals(t + 1, cache.length(seq), "length after step " + t);
            assertTrue(cache.salientLength(seq) <= Math.floor(cache.salientFraction() * middle),
                    "salient budget: " + cache.salientLength(seq) + " of " + middle + " middle tokens at step " + t);
            if (t == s.tokens() - 1) {
                got = out.read("out", seed);
            }
        }
        return got;
    }

    private static double error(float[] got, SyntheticKv s, double scale) {
        ReferenceAttention.Result ref = ReferenceAttention.attend(s.q(), 0, s.k(), s.v(), 0, 1, s.tokens(), HEADS, KVH, D,
                scale, false);
        double[] g = new double[got.length];
        for (int i = 0; i < got.length; i++) {
            g[i] = got[i];
        }
        return QuantAccuracy.relativeError(g, ref.out());
    }

    private static SyntheticKv layer(long seed, int tokens) {
        return SyntheticKv.builder().qoHeads(HEADS).kvHeads(KVH).headDim(D).tokens(tokens).seed(seed).build();
    }

    @Test
    void decodeQueriesPickTheTokensThatCarryTheError() {
        long seed = Checks.baseSeed() + 501;
        SyntheticKv s = layer(seed, 640);
        KvFormat int2 = KvFormat.quantized(DType.INT2, 64).withRotation(Rotation.HADAMARD);
        double plainError;
        double salientError;
        try (Arena arena = Arena.ofConfined()) {
            try (TieredKvCache cache = tiered(int2).build(); DecodePlan plan = plan(cache, 1)) {
                plainError = error(decodeLoop(arena, cache, plan, s, cache.newSequence(), seed), s, plan.scale());
            }
            try (TieredKvCache cache = tiered(int2).salient(0.05, 8).build(); DecodePlan plan = plan(cache, 1)) {
                int seq = cache.newSequence();
                salientError = error(decodeLoop(arena, cache, plan, s, seq, seed), s, plan.scale());
                assertTrue(cache.salientLength(seq) > 0, "no token was kept as salient");
            }
        }
        String report = String.format("INT2 G64 Hadamard tiered: %.2f%% without salient tokens, %.2f%% with 5%% "
                + "(seed %d)", 100 * plainError, 100 * salientError, seed);
        assertTrue(salientError < 0.5 * plainError, report);
    }

    @Test
    void everyTokenIsAttendedOnceAcrossTheThreeParts() {
        long seed = Checks.baseSeed() + 502;
        SyntheticKv s = layer(seed, 400);
        try (Arena arena = Arena.ofConfined();
                TieredKvCache cache = tiered(KvFormat.quantized(DType.INT8, 64)).salient(0.2, 8).build();
                DecodePlan plan = plan(cache, 2)) {
            int seq = cache.newSequence();
            float[] got = decodeLoop(arena, cache, plan, s, seq, seed);
            assertTrue(cache.salientLength(seq) > 0 && cache.quantizedLength(seq) > 0,
                    "both middle parts must hold tokens: " + cache.salientLength(seq) + " salient, "
                            + cache.quantizedLength(seq) + " quantized");
            ReferenceAttention.Result ref = ReferenceAttention.attend(s.q(), 0, s.k(), s.v(), 0, 1, s.tokens(), HEADS,
                    KVH, D, plan.scale(), false);
            Checks.assertClose(got, ref.out(), 0.01, "tiered INT8 + salient vs fp64 (seed " + seed + ")");

            // A fork holds the same tokens in every part and decodes like its parent.
            int child = cache.fork(seq);
            assertEquals(cache.salientLength(seq), cache.salientLength(child));
            assertEquals(cache.length(seq), cache.length(child));
            Checks.Output out = Checks.Output.of(arena, DType.F32, 2, HEADS, D);
            float[] q2 = new float[2 * HEADS * D];
            System.arraycopy(s.q(), 0, q2, 0, HEADS * D);
            System.arraycopy(s.q(), 0, q2, HEADS * D, HEADS * D);
            plan.run(Tensor.ofFloats(arena, DType.F32, q2, 2, HEADS, D), cache, 0, cache.tables(seq, child),
                    out.tensor, null);
            float[] both = out.read("out", seed);
            for (int i = 0; i < HEADS * D; i++) {
                assertEquals(both[i], both[HEADS * D + i], 0f, "fork decodes like its parent");
            }
            cache.free(child);
        }
    }

    /** A prompt written at once: its last queries (with their fp64 LSE) choose the salient tokens at the first move. */
    @Test
    void promptProbesGivenWithObserve() {
        long seed = Checks.baseSeed() + 503;
        int len = 480;
        SyntheticKv s = layer(seed, len);
        int probes = 4;
        long[] positions = new long[probes];
        for (int i = 0; i < probes; i++) {
            positions[i] = len - probes + i + 1;
        }
        float[] pq = s.queriesAt(positions, PROBE_SALT);
        double scale = 1.0 / Math.sqrt(D);
        float[] lse = new float[probes * HEADS];
        for (int i = 0; i < probes; i++) {
            int visible = (int) positions[i];
            ReferenceAttention.Result r = ReferenceAttention.attend(pq, i * HEADS * D,
                    Arrays.copyOf(s.k(), visible * KVH * D), Arrays.copyOf(s.v(), visible * KVH * D), 0, 1, visible,
                    HEADS, KVH, D, scale, false);
            for (int h = 0; h < HEADS; h++) {
                lse[i * HEADS + h] = (float) r.lse()[h];
            }
        }
        try (Arena arena = Arena.ofConfined();
                TieredKvCache cache = tiered(KvFormat.quantized(DType.INT8, 64)).numPages(48, 64).salient(0.05, 8)
                        .probes(probes).build();
                DecodePlan plan = plan(cache, 1)) {
            int seq = cache.newSequence();
            int[] seqs = {seq};
            PagedKvCache.Reservation r = cache.reserve(seqs, new int[] {len});
            cache.write(0, r, Tensor.ofFloats(arena, DType.F32, s.k(), len, KVH, D),
                    Tensor.ofFloats(arena, DType.F32, s.v(), len, KVH, D));
            Tensor lseT = Tensor.ofFloats(arena, DType.F32, lse, probes, HEADS);
            Tensor qT = Tensor.ofFloats(arena, DType.F32, pq, probes, HEADS, D);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("lse"), () -> cache.observe(seq, 0, qT,
                    Tensor.ofFloats(arena, DType.F32, lse, probes * HEADS), (float) scale));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("layer"), () -> cache.observe(seq, 1, qT, lseT,
                    (float) scale));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("scale"), () -> cache.observe(seq, 0, qT, lseT, Float.NaN));
            cache.observe(seq, 0, qT, lseT, (float) scale);
            cache.compact(seqs);
            long middle = len - cache.precise().length(seq);
            assertEquals(middle, cache.quantizedLength(seq) + cache.salientLength(seq));
            assertEquals((long) Math.floor(0.05 * middle), cache.salientLength(seq),
                    "a retrieval-heavy prompt fills the salient budget at once");
            long bf16 = 2L * KVH * D * 2;
            long int8 = cache.quantized().bytesPerToken();
            assertEquals(cache.precise().length(seq) * bf16 + cache.quantizedLength(seq) * int8
                    + cache.salientLength(seq) * bf16, cache.bytesOf(seq), "bytes of every part");
            Checks.Output out = Checks.Output.of(arena, DType.F32, 1, HEADS, D);
            plan.run(Tensor.ofFloats(arena, DType.F32, s.q(), 1, HEADS, D), cache, 0, cache.tables(seq), out.tensor,
                    null);
            ReferenceAttention.Result ref = ReferenceAttention.attend(s.q(), 0, s.k(), s.v(), 0, 1, len, HEADS, KVH, D,
                    plan.scale(), false);
            Checks.assertClose(out.read("out", seed), ref.out(), 0.01, "prompt + salient INT8 vs fp64 (seed " + seed
                    + ")");
        }
    }

    @Test
    void badInputNamesTheArgumentAndLeavesTheCacheAsItWas() {
        KvFormat int4 = KvFormat.quantized(DType.INT4, 64);
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("salient", "fraction"), () -> tiered(int4).salient(0, 4).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("salient", "fraction"),
                () -> tiered(int4).salient(1.5, 4).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("salient", "pages"), () -> tiered(int4).salient(0.1, 0).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("probes"), () -> tiered(int4).salient(0.1, 4).probes(0).build());
        long seed = Checks.baseSeed() + 504;
        int len = 200;
        SyntheticKv s = layer(seed, len);
        try (Arena arena = Arena.ofConfined();
                TieredKvCache plain = tiered(int4).build();
                TieredKvCache cache = tiered(int4).salient(1.0, 1).probes(2).build();
                DecodePlan plan = plan(cache, 1)) {
            Tensor q1 = Tensor.ofFloats(arena, DType.F32, s.q(), 1, HEADS, D);
            Tensor lse1 = Tensor.allocate(arena, DType.F32, 1, HEADS);
            int p = plain.newSequence();
            plain.reserve(new int[] {p}, new int[] {1});
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("salient"), () -> plain.observe(p, 0, q1, lse1, 0.125f));
            int seq = cache.newSequence();
            int[] seqs = {seq};
            PagedKvCache.Reservation r = cache.reserve(seqs, new int[] {len});
            cache.write(0, r, Tensor.ofFloats(arena, DType.F32, s.k(), len, KVH, D),
                    Tensor.ofFloats(arena, DType.F32, s.v(), len, KVH, D));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("q"), () -> cache.observe(seq, 0,
                    Tensor.allocate(arena, DType.F32, len + 1, HEADS, D), Tensor.allocate(arena, DType.F32, len + 1,
                            HEADS), 0.125f));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("tables"), () -> plan.run(q1, cache, 0, plain.tables(p),
                    Tensor.allocate(arena, DType.F32, 1, HEADS, D), null));
            // Probes that attend everywhere make every middle token salient: one salient page cannot hold them.
            float[] uniform = new float[HEADS * D];
            float[] lse = new float[HEADS];
            Arrays.fill(lse, (float) Math.log(len) - 1f);
            cache.observe(seq, 0, Tensor.ofFloats(arena, DType.F32, uniform, 1, HEADS, D),
                    Tensor.ofFloats(arena, DType.F32, lse, 1, HEADS), 0.125f);
            long precise = cache.precise().length(seq);
            assertAttn4j(Status.OUT_OF_MEMORY, List.of("cache"), () -> cache.compact(seqs));
            assertEquals(len, cache.length(seq), "a failed move loses no token");
            assertTrue(cache.precise().length(seq) <= precise);
            assertEquals(cache.length(seq), cache.precise().length(seq) + cache.quantizedLength(seq)
                    + cache.salientLength(seq));
        }
    }
}
