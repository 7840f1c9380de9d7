package org.attn4j.tests;

import static org.attn4j.testing.Checks.assertAttn4j;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.attn4j.DType;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.Status;
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.attn4j.testing.KvGen;
import org.attn4j.testing.KvMirror;
import org.attn4j.testing.OnDevice;
import org.attn4j.testing.Runners;
import org.junit.jupiter.api.Test;

/** The page allocator end to end: reserve/write/append, fork, free, refcounts, exhaustion. */
class PagedKvCacheTest extends LibFixture {
    private static final int KVH = 2;
    private static final int D = 64;
    private static final int G = 4;

    private PagedKvCache cache(int pageSize, int numPages, DType dtype, int layers) {
        return PagedKvCache.builder(lib).kvHeads(KVH).headDim(D).pageSize(pageSize).numPages(numPages).dtype(dtype)
                .layers(layers).build();
    }

    static void checkDecode(Arena arena, KvMirror m, int layer, int[] seqs, long seed) {
        try (OnDevice host = OnDevice.of(lib)) {
            Runners.decodeMatchesMirror(lib, arena, host, m, G, layer, seqs, seed);
        }
    }

    @Test
    void reserveHandsOutDistinctPagesAndConsistentTables() {
        long seed = Checks.baseSeed() + 10;
        try (Arena arena = Arena.ofConfined(); PagedKvCache c = cache(16, 64, DType.F32, 1)) {
            KvMirror m = new KvMirror(c, new KvGen(seed, KVH, D), DType.F32);
            int a = m.newSequence();
            int b = m.newSequence();
            int e = m.newSequence();
            PagedKvCache.Reservation r = m.append(arena, new int[] {a, b, e}, new int[] {40, 16, 1}, true);
            assertEquals(64 - 3 - 1 - 1, c.freePageCount());
            assertEquals(57, r.totalTokens());
            PageTable t = r.pageTable();
            assertEquals(3, t.batchSize());
            int[] indptr = t.indptr();
            assertArrayEquals(new int[] {0, 3, 4, 5}, indptr);
            assertArrayEquals(new int[] {8, 16, 1}, t.lastPageLen());
            Set<Integer> ids = new HashSet<>();
            for (int p : t.indices()) {
                assertTrue(p >= 0 && p < 64, "page id " + p);
                assertTrue(ids.add(p), "page " + p + " handed out twice: " + java.util.Arrays.toString(t.indices()));
            }
            assertArrayEquals(t.indices(), c.pageTable(a, b, e).indices());
            assertEquals(40, c.length(a));
            // grow across a page boundary and check the new table extends the old one
            m.append(arena, new int[] {a}, new int[] {9}, false);
            int[] aPages = c.pageTable(a).indices();
            assertEquals(4, aPages.length);
            assertArrayEquals(java.util.Arrays.copyOf(t.indices(), 3), java.util.Arrays.copyOf(aPages, 3));
            assertArrayEquals(new int[] {1}, c.pageTable(a).lastPageLen());
            checkDecode(arena, m, 0, new int[] {a, b, e}, seed);
        }
    }

    @Test
    void exhaustionIsOutOfMemoryAndLeavesStateUnchanged() {
        long seed = Checks.baseSeed() + 11;
        try (Arena arena = Arena.ofConfined(); PagedKvCache c = cache(16, 5, DType.BF16, 1)) {
            KvMirror m = new KvMirror(c, new KvGen(seed, KVH, D), DType.F32);
            int a = m.newSequence();
            int b = m.newSequence();
            m.append(arena, new int[] {a}, new int[] {40}, true); // 3 pages
            int free = c.freePageCount();
            int[] pagesBefore = c.pageTable(a).indices();
            assertAttn4j(Status.OUT_OF_MEMORY, List.of("cache", "pages"),
                    () -> c.reserve(new int[] {a, b}, new int[] {30, 10})); // needs 2 + 1 > 2
            assertEquals(free, c.freePageCount());
            assertEquals(40, c.length(a));
            assertEquals(0, c.length(b));
            assertArrayEquals(pagesBefore, c.pageTable(a).indices());
            // the OOM must not have left anything half-done: the data still decodes, and what fits still fits
            checkDecode(arena, m, 0, new int[] {a}, seed);
            m.append(arena, new int[] {a, b}, new int[] {8, 16}, true); // a: 48 = 3 pages, b: 1 page
            assertEquals(1, c.freePageCount());
            checkDecode(arena, m, 0, new int[] {a, b}, seed + 1);
            // fork of a sequence with a partial last page needs a page
            m.append(arena, new int[] {b}, new int[] {10}, true); // b: 26 = 2 pages, last partial
            assertEquals(0, c.freePageCount());
            assertAttn4j(Status.OUT_OF_MEMORY, List.of("fork"), () -> c.fork(b));
            assertEquals(0, c.freePageCount());
            checkDecode(arena, m, 0, new int[] {a, b}, seed + 2);
        }
    }

    @Test
    void failedWriteRollsBackAndKeepsData() {
        long seed = Checks.baseSeed() + 12;
        try (Arena arena = Arena.ofConfined(); PagedKvCache c = cache(16, 16, DType.F16, 1)) {
            KvMirror m = new KvMirror(c, new KvGen(seed, KVH, D), DType.F32);
            int a = m.newSequence();
            m.append(arena, new int[] {a}, new int[] {20}, true);
            int free = c.freePageCount();
            for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
                for (String which : new String[] {"k", "v"}) {
                    float[] ok = new KvGen(seed, KVH, D).values(30);
                    float[] poisoned = ok.clone();
                    poisoned[poisoned.length / 2 + 3] = bad;
                    Tensor good = Tensor.ofFloats(arena, DType.F32, ok, 30, KVH, D);
                    Tensor evil = Tensor.ofFloats(arena, DType.F32, poisoned, 30, KVH, D);
                    assertAttn4j(Status.INVALID_ARGUMENT, List.of(which), () -> c.append(new int[] {a},
                            new int[] {30}, which.equals("k") ? evil : good, which.equals("k") ? good : evil));
                    assertEquals(20, c.length(a), "length after rejected " + bad + " in " + which);
                    assertEquals(free, c.freePageCount(), "free pages after rejected " + bad + " in " + which);
                }
            }
            // wrong shape is rejected in Java, also rolled back
            Tensor small = Tensor.allocate(arena, DType.F32, 29, KVH, D);
            Tensor right = Tensor.allocate(arena, DType.F32, 30, KVH, D);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("k"), () -> c.append(new int[] {a}, new int[] {30}, small, right));
            assertEquals(20, c.length(a));
            assertEquals(free, c.freePageCount());
            checkDecode(arena, m, 0, new int[] {a}, seed);
            m.append(arena, new int[] {a}, new int[] {30}, true);
            checkDecode(arena, m, 0, new int[] {a}, seed + 1);
        }
    }

    @Test
    void forkSharesFullPagesAndCopiesThePartialOne() {
        long seed = Checks.baseSeed() + 13;
        try (Arena arena = Arena.ofConfined(); PagedKvCache c = cache(16, 32, DType.BF16, 1)) {
            KvMirror m = new KvMirror(c, new KvGen(seed, KVH, D), DType.BF16);
            int a = m.newSequence();
            m.append(arena, new int[] {a}, new int[] {40}, true); // 2 full + 1 partial
            int free = c.freePageCount();
            int b = m.fork(a);
            assertEquals(free - 1, c.freePageCount(), "fork copies only the partial last page");
            int[] pa = c.pageTable(a).indices();
            int[] pb = c.pageTable(b).indices();
            assertEquals(pa[0], pb[0]);
            assertEquals(pa[1], pb[1]);
            assertTrue(pa[2] != pb[2], "partial last page must be copied");
            assertEquals(40, c.length(b));
            // both continue differently; a third forks b at a page boundary (no copy)
            m.append(arena, new int[] {a, b}, new int[] {5, 8}, true); // b: 48 = 3 full pages
            int free2 = c.freePageCount();
            int e = m.fork(b);
            assertEquals(free2, c.freePageCount(), "fork at a page boundary shares every page");
            assertArrayEquals(c.pageTable(b).indices(), c.pageTable(e).indices());
            m.append(arena, new int[] {e, b}, new int[] {3, 1}, false);
            assertTrue(c.pageTable(b).indices()[3] != c.pageTable(e).indices()[3]);
            checkDecode(arena, m, 0, new int[] {a, b, e}, seed);
            checkDecode(arena, m, 0, new int[] {e, a}, seed + 1);
            // refcounts: freeing a keeps shared pages alive for b and e
            m.free(a);
            checkDecode(arena, m, 0, new int[] {b, e}, seed + 2);
            m.free(b);
            checkDecode(arena, m, 0, new int[] {e}, seed + 3);
            m.free(e);
            assertEquals(32, c.freePageCount(), "every page back after freeing all sequences");
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("seq"), () -> c.length(a));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("seq"), () -> c.free(a));
            // recycled pages: a new sequence gets them and must see only its own data
            int f = m.newSequence();
            m.append(arena, new int[] {f}, new int[] {100}, true);
            checkDecode(arena, m, 0, new int[] {f}, seed + 4);
        }
    }

    @Test
    void multiLayerReserveOnceWriteEachLayer() {
        long seed = Checks.baseSeed() + 14;
        try (Arena arena = Arena.ofConfined(); PagedKvCache c = cache(16, 32, DType.F32, 3)) {
            KvMirror m = new KvMirror(c, new KvGen(seed, KVH, D), DType.F32);
            int a = m.newSequence();
            int b = m.newSequence();
            m.append(arena, new int[] {a, b}, new int[] {37, 5}, false);
            m.append(arena, new int[] {b}, new int[] {20}, false);
            for (int l = 0; l < 3; l++) {
                checkDecode(arena, m, l, new int[] {a, b}, seed + l);
            }
            Tensor k = Tensor.allocate(arena, DType.F32, 1, KVH, D);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("append"), () -> c.append(new int[] {a}, new int[] {1}, k, k));
            PagedKvCache.Reservation r = c.reserve(new int[] {a}, new int[] {1});
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("layer"), () -> c.write(3, r, k, k));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("layer"), () -> c.write(-1, r, k, k));
            c.rollback(r);
            assertEquals(37, c.length(a));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("reservation"), () -> c.write(0, r, k, k));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("reservation"), () -> c.rollback(r));
        }
    }

    @Test
    void reserveArgumentChecks() {
        try (PagedKvCache c = cache(16, 8, DType.BF16, 1)) {
            int a = c.newSequence();
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("seqs[1]"), () -> c.reserve(new int[] {a, a}, new int[] {1, 1}));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("counts[0]"), () -> c.reserve(new int[] {a}, new int[] {-1}));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("seqs[0]"), () -> c.reserve(new int[] {99}, new int[] {1}));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("seqs"), () -> c.reserve(new int[] {}, new int[] {}));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("seqs"), () -> c.reserve(new int[] {a}, null));
            assertEquals(8, c.freePageCount());
            assertEquals(0, c.length(a));
        }
    }

    @Test
    void builderChecks() {
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("kvHeads"),
                () -> PagedKvCache.builder(lib).headDim(64).numPages(4).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("headDim"),
                () -> PagedKvCache.builder(lib).kvHeads(1).numPages(4).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("numPages"),
                () -> PagedKvCache.builder(lib).kvHeads(1).headDim(64).numPages(0).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("pageSize"),
                () -> PagedKvCache.builder(lib).kvHeads(1).headDim(64).numPages(4).pageSize(0).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("layers"),
                () -> PagedKvCache.builder(lib).kvHeads(1).headDim(64).numPages(4).layers(0).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("dtype"),
                () -> PagedKvCache.builder(lib).kvHeads(1).headDim(64).numPages(4).dtype(DType.I32).build());
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("lib"), () -> PagedKvCache.builder(null));
    }

    @Test
    void closedCacheIsIllegalState() {
        PagedKvCache c = cache(16, 8, DType.BF16, 1);
        int a = c.newSequence();
        PageTable t = c.pageTable(a);
        c.close();
        c.close(); // idempotent
        assertThrows(IllegalStateException.class, c::newSequence);
        assertThrows(IllegalStateException.class, () -> c.length(a));
        assertThrows(IllegalStateException.class, () -> c.reserve(new int[] {a}, new int[] {1}));
        assertThrows(IllegalStateException.class, () -> c.fillPageTable(t, new int[] {a}));
        assertThrows(IllegalStateException.class, () -> c.fork(a));
        assertThrows(IllegalStateException.class, () -> c.free(a));
    }
}
