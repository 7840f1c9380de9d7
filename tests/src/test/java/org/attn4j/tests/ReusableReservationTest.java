package org.attn4j.tests;

import static org.attn4j.testing.Checks.assertAttn4j;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.util.List;
import java.util.Random;

import org.attn4j.Attention;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.PagedKvCache;
import org.attn4j.Status;
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.junit.jupiter.api.Test;

/** The allocation-free step: one Reservation reused for every reserve/write/decode step. */
class ReusableReservationTest extends LibFixture {
    private static final int KV_HEADS = 2;
    private static final int HEADS = 8;
    private static final int D = 64;

    private PagedKvCache cache() {
        return PagedKvCache.builder(lib).layers(2).kvHeads(KV_HEADS).headDim(D).pageSize(16).numPages(64)
                .dtype(DType.F32).build();
    }

    /** A reused reservation stores exactly what fresh reservations store, step after step. */
    @Test
    void reusedReservationMatchesFreshOnes() {
        long seed = Checks.baseSeed() + 90;
        Random rnd = new Random(seed);
        try (Arena arena = Arena.ofConfined(); PagedKvCache fresh = cache(); PagedKvCache reused = cache();
                DecodePlan plan = Attention.decode(lib).forCache(fresh).qoHeads(HEADS).qDType(DType.F32)
                        .maxBatch(2).build()) {
            int[] seqsA = {fresh.newSequence(), fresh.newSequence()};
            int[] seqsB = {reused.newSequence(), reused.newSequence()};
            PagedKvCache.Reservation into = reused.newReservation(2, 16);
            Tensor q = Tensor.allocate(arena, DType.F32, 2, HEADS, D);
            Tensor outA = Tensor.allocate(arena, DType.F32, 2, HEADS, D);
            Tensor outB = Tensor.allocate(arena, DType.F32, 2, HEADS, D);
            for (int step = 0; step < 40; step++) {
                int[] counts = step == 0 ? new int[] {17, 5} : new int[] {1, 1 + (step % 3 == 0 ? 2 : 0)};
                int tokens = counts[0] + counts[1];
                PagedKvCache.Reservation ra = fresh.reserve(seqsA, counts);
                PagedKvCache.Reservation rb = reused.reserve(seqsB, counts, into);
                assertEquals(ra.totalTokens(), rb.totalTokens());
                assertArrayEquals(ra.pageTable().lastPageLen(), rb.pageTable().lastPageLen());
                for (int layer = 0; layer < 2; layer++) {
                    Tensor k = Tensor.allocate(arena, DType.F32, tokens, KV_HEADS, D);
                    Tensor v = Tensor.allocate(arena, DType.F32, tokens, KV_HEADS, D);
                    for (long i = 0; i < k.elementCount(); i++) {
                        k.setFlat(i, (float) rnd.nextGaussian());
                        v.setFlat(i, (float) rnd.nextGaussian());
                    }
                    fresh.write(layer, ra, k, v);
                    reused.write(layer, rb, k, v);
                }
                for (long i = 0; i < q.elementCount(); i++) {
                    q.setFlat(i, (float) rnd.nextGaussian());
                }
                for (int layer = 0; layer < 2; layer++) {
                    outA.fill(Float.NaN);
                    outB.fill(Float.NaN);
                    plan.run(q, fresh, layer, ra.pageTable(), outA);
                    plan.run(q, reused, layer, rb.pageTable(), outB);
                    assertArrayEquals(outA.toFloatArray(), outB.toFloatArray(),
                            "step " + step + " layer " + layer + " (seed " + seed + ")");
                }
            }
            assertEquals(fresh.length(seqsA[0]), reused.length(seqsB[0]));
            assertEquals(fresh.freePageCount(), reused.freePageCount());
        }
    }

    @Test
    void rejectsMisuse() {
        try (Arena arena = Arena.ofConfined(); PagedKvCache a = cache(); PagedKvCache b = cache()) {
            int s = a.newSequence();
            PagedKvCache.Reservation fromB = b.newReservation(1, 4);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("into"), () -> a.reserve(new int[] {s}, new int[] {1}, fromB));
            PagedKvCache.Reservation small = a.newReservation(1, 1);
            int free = a.freePageCount();
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("into"), () -> a.reserve(new int[] {s}, new int[] {17}, small));
            assertEquals(0, a.length(s));
            assertEquals(free, a.freePageCount());
            int t = a.newSequence();
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("seqs"),
                    () -> a.reserve(new int[] {s, t}, new int[] {1, 1}, small));
            Tensor k = Tensor.allocate(arena, DType.F32, 1, KV_HEADS, D);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("reservation"), () -> a.write(0, small, k, k));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("maxPages"), () -> a.newReservation(1, 0));
        }
    }
}
