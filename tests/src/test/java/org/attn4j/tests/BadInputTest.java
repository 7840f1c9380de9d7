package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Set;
import java.util.function.Consumer;
import java.util.stream.Stream;

import org.attn4j.Attention;
import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.DType;
import org.attn4j.DecodePlan;
import org.attn4j.Device;
import org.attn4j.PageTable;
import org.attn4j.PagedKvCache;
import org.attn4j.PrefillPlan;
import org.attn4j.Status;
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.attn4j.testing.KvGen;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The bad-input matrix: every rejected input raises {@link Attn4jException} with the expected
 * status (or {@link IllegalStateException} for closed objects), its message names the offending
 * argument, nothing crashes the JVM, and the valid calls still work afterwards.
 */
class BadInputTest extends LibFixture {
    static final int H = 8;
    static final int KVH = 2;
    static final int D = 64;
    static final int PS = 16;
    static final int PAGES = 16;

    /** Valid inputs for every entry point; each case breaks exactly one thing. */
    static final class Fx {
        final Arena arena = Arena.ofShared();
        final KvGen gen = new KvGen(Checks.baseSeed() + 50, KVH, D);
        PagedKvCache cache;
        int seqA;
        int seqB;
        int seqEmpty;
        DecodePlan plan;
        PageTable table;
        Tensor q;
        Tensor out;
        Tensor lse;
        PrefillPlan pplan;
        Tensor pq;
        Tensor qoIndptr;
        Tensor pk;
        Tensor pv;
        Tensor kvIndptr;
        Tensor pout;
        Tensor plse;
        PrefillPlan pagedPlan;
        Tensor pq9;
        Tensor pagedIndptr;
        Tensor pout9;
        Tensor plse9;
        Tensor mv;
        Tensor ms;
        Tensor mOut;
        Tensor msOut;

        Fx(Attn4j lib) {
            cache = PagedKvCache.builder(lib).kvHeads(KVH).headDim(D).pageSize(PS).numPages(PAGES).dtype(DType.BF16)
                    .build();
            seqA = cache.newSequence();
            seqB = cache.newSequence();
            seqEmpty = cache.newSequence();
            cache.append(new int[] {seqA, seqB}, new int[] {40, 5}, f32(45, KVH, D), f32(45, KVH, D));
            plan = Attention.decode(lib).forCache(cache).qoHeads(H).qDType(DType.F32).outDType(DType.F32).maxBatch(2)
                    .build();
            table = cache.pageTable(seqA, seqB);
            q = f32(2, H, D);
            out = Tensor.allocate(arena, DType.F32, 2, H, D);
            lse = Tensor.allocate(arena, DType.F32, 2, H);
            pplan = Attention.prefill(lib).qoHeads(H).kvHeads(KVH).headDim(D).qDType(DType.F32).kvDType(DType.BF16)
                    .outDType(DType.F32).causal(true).maxBatch(2).build();
            pq = f32(10, H, D);
            qoIndptr = Tensor.ofInts(arena, 0, 4, 10);
            pk = Tensor.ofFloats(arena, DType.BF16, gen.keys(0, 20), 20, KVH, D);
            pv = Tensor.ofFloats(arena, DType.BF16, gen.values(20), 20, KVH, D);
            kvIndptr = Tensor.ofInts(arena, 0, 8, 20);
            pout = Tensor.allocate(arena, DType.F32, 10, H, D);
            plse = Tensor.allocate(arena, DType.F32, 10, H);
            pagedPlan = Attention.prefill(lib).forCache(cache).qoHeads(H).qDType(DType.F32).outDType(DType.F32)
                    .causal(true).maxBatch(2).build();
            pq9 = f32(9, H, D);
            pagedIndptr = Tensor.ofInts(arena, 0, 4, 9);
            pout9 = Tensor.allocate(arena, DType.F32, 9, H, D);
            plse9 = Tensor.allocate(arena, DType.F32, 9, H);
            mv = f32(3, 2, H, D);
            ms = f32(3, 2, H);
            mOut = Tensor.allocate(arena, DType.F32, 3, H, D);
            msOut = Tensor.allocate(arena, DType.F32, 3, H);
        }

        Tensor f32(long... shape) {
            int n = 1;
            for (long s : shape) {
                n *= (int) s;
            }
            return Tensor.ofFloats(arena, DType.F32, gen.gaussian(n, 1), shape);
        }

        Tensor t(DType dt, long... shape) {
            Tensor x = Tensor.allocate(arena, dt, shape);
            x.fill(0.5f);
            return x;
        }

        /** A tensor whose arena is already closed. */
        Tensor closed(DType dt, long... shape) {
            Arena a = Arena.ofConfined();
            Tensor x = Tensor.allocate(a, dt, shape);
            a.close();
            return x;
        }

        Tensor withValue(Tensor src, long flat, float value) {
            Tensor x = Tensor.allocate(arena, src.dtype(), src.shape());
            MemorySegment.copy(src.segment(), 0, x.segment(), 0, src.segment().byteSize());
            x.setFlat(flat, value);
            return x;
        }

        void decode() {
            plan.run(q, cache, 0, table, out, lse);
        }

        void decode(Tensor q2, PageTable t2, Tensor out2, Tensor lse2) {
            plan.run(q2, cache, 0, t2, out2, lse2);
        }

        void prefill() {
            pplan.run(pq, qoIndptr, pk, pv, kvIndptr, pout, plse);
        }

        void prefill(Tensor q2, Tensor qi, Tensor k2, Tensor v2, Tensor ki, Tensor o2, Tensor l2) {
            pplan.run(q2, qi, k2, v2, ki, o2, l2);
        }

        void pagedPrefill(Tensor qi, PageTable t2) {
            pagedPlan.run(pq9, qi, cache, 0, t2, pout9, plse9);
        }

        void merge() {
            Attention.mergeStates(lib, mv, ms, mOut, msOut);
        }

        void merge(Tensor v, Tensor s, Tensor o, Tensor so) {
            Attention.mergeStates(lib, v, s, o, so);
        }

        PageTable raw(int[] indptr, int[] indices, int[] last) {
            return PageTable.of(arena, indptr, indices, last);
        }

        void close() {
            plan.close();
            pplan.close();
            pagedPlan.close();
            cache.close();
            arena.close();
        }
    }

    static Fx fx;

    @BeforeAll
    static void fixture() {
        fx = new Fx(lib);
    }

    @AfterAll
    static void closeFixture() {
        if (fx != null) {
            fx.close();
        }
    }

    /** A bad input: expected statuses (empty = IllegalStateException) and names the message must contain. */
    record Case(String name, Set<Status> status, List<String> names, Consumer<Fx> action) {
        @Override
        public String toString() {
            return name;
        }
    }

    static Case inv(String name, List<String> names, Consumer<Fx> action) {
        return new Case(name, Set.of(Status.INVALID_ARGUMENT), names, action);
    }

    static Case unsupportedOrInvalid(String name, List<String> names, Consumer<Fx> action) {
        return new Case(name, Set.of(Status.INVALID_ARGUMENT, Status.UNSUPPORTED), names, action);
    }

    static Case ise(String name, Consumer<Fx> action) {
        return new Case(name, Set.of(), List.of(), action);
    }

    static final List<String> TABLE = List.of("table", "indptr", "indices", "last_page_len", "lastPageLen");

    static Stream<Case> cases() {
        List<Case> c = new ArrayList<>();
        // ---- Tensor construction ----
        c.add(inv("tensor rank 0", List.of("shape"), f -> Tensor.of(f.arena.allocate(64), DType.F32)));
        c.add(inv("tensor rank 5", List.of("shape"), f -> Tensor.of(f.arena.allocate(64), DType.F32, 1, 1, 1, 1, 1)));
        c.add(inv("tensor negative dim", List.of("shape[1]"), f -> Tensor.of(f.arena.allocate(64), DType.F32, 2, -1)));
        c.add(inv("tensor strides length", List.of("strides"),
                f -> Tensor.of(f.arena.allocate(64), DType.F32, new long[] {2, 2}, new long[] {2})));
        c.add(inv("tensor negative stride", List.of("strides[0]"),
                f -> Tensor.of(f.arena.allocate(64), DType.F32, new long[] {2, 2}, new long[] {-2, 1})));
        c.add(inv("tensor too-small segment", List.of("segment"),
                f -> Tensor.of(f.arena.allocate(2 * H * D * 4 - 4, 64), DType.F32, 2, H, D)));
        c.add(inv("tensor too-small for strides", List.of("segment"),
                f -> Tensor.of(f.arena.allocate(64 * 4, 64), DType.F32, new long[] {2, 64}, new long[] {65, 1})));
        c.add(inv("tensor misaligned F32", List.of("segment"),
                f -> Tensor.of(f.arena.allocate(4096, 64).asSlice(2, 1024), DType.F32, 256)));
        c.add(inv("tensor misaligned BF16", List.of("segment"),
                f -> Tensor.of(f.arena.allocate(4096, 64).asSlice(1, 1024), DType.BF16, 512)));
        c.add(inv("tensor heap segment", List.of("segment"),
                f -> Tensor.of(MemorySegment.ofArray(new float[16]), DType.F32, 16)));
        c.add(inv("tensor null segment", List.of("segment"), f -> Tensor.of(null, DType.F32, 16)));
        c.add(inv("tensor null dtype", List.of("dtype"), f -> Tensor.of(f.arena.allocate(64), null, 16)));
        c.add(inv("ofFloats count", List.of("values"), f -> Tensor.ofFloats(f.arena, DType.F32, new float[3], 2, 2)));

        // ---- decode: q ----
        c.add(inv("decode q rank 2", List.of("q"), f -> f.decode(f.f32(2, H * D), f.table, f.out, f.lse)));
        c.add(inv("decode q batch != table batch", List.of("q"), f -> f.decode(f.f32(3, H, D), f.table, f.out, f.lse)));
        c.add(inv("decode q heads", List.of("q"), f -> f.decode(f.f32(2, H / 2, D), f.table, f.out, f.lse)));
        c.add(inv("decode q headDim", List.of("q"), f -> f.decode(f.f32(2, H, D / 2), f.table, f.out, f.lse)));
        c.add(inv("decode q dtype BF16 for F32 plan", List.of("q"),
                f -> f.decode(f.t(DType.BF16, 2, H, D), f.table, f.out, f.lse)));
        c.add(inv("decode q dtype I32", List.of("q"), f -> f.decode(f.t(DType.I32, 2, H, D), f.table, f.out, f.lse)));
        c.add(inv("decode q last dim strided", List.of("q"), f -> f.decode(Tensor.of(f.arena.allocate(2L * H * D * 8, 64),
                DType.F32, new long[] {2, H, D}, new long[] {2L * H * D, 2L * D, 2}), f.table, f.out, f.lse)));
        c.add(inv("decode q null", List.of("q"), f -> f.decode(null, f.table, f.out, f.lse)));
        c.add(inv("decode q closed arena", List.of("q"), f -> f.decode(f.closed(DType.F32, 2, H, D), f.table, f.out, f.lse)));
        c.add(inv("decode q NaN", List.of("q"), f -> f.decode(f.withValue(f.q, 77, Float.NaN), f.table, f.out, f.lse)));
        c.add(inv("decode q +Inf", List.of("q"),
                f -> f.decode(f.withValue(f.q, 2 * H * D - 1, Float.POSITIVE_INFINITY), f.table, f.out, f.lse)));
        c.add(inv("decode q -Inf", List.of("q"),
                f -> f.decode(f.withValue(f.q, 0, Float.NEGATIVE_INFINITY), f.table, f.out, f.lse)));
        // ---- decode: out / lse ----
        c.add(inv("decode out shape", List.of("out"), f -> f.decode(f.q, f.table, f.t(DType.F32, 2, H, D + 16), f.lse)));
        c.add(inv("decode out rank 2", List.of("out"), f -> f.decode(f.q, f.table, f.t(DType.F32, 2, H * D), f.lse)));
        c.add(inv("decode out dtype", List.of("out"), f -> f.decode(f.q, f.table, f.t(DType.BF16, 2, H, D), f.lse)));
        c.add(inv("decode out null", List.of("out"), f -> f.decode(f.q, f.table, null, f.lse)));
        c.add(inv("decode out closed arena", List.of("out"),
                f -> f.decode(f.q, f.table, f.closed(DType.F32, 2, H, D), f.lse)));
        c.add(inv("decode out last dim strided", List.of("out"), f -> f.decode(f.q, f.table, Tensor.of(
                f.arena.allocate(2L * H * D * 8, 64), DType.F32, new long[] {2, H, D}, new long[] {2L * H * D, 2L * D, 2}),
                f.lse)));
        c.add(inv("decode lse shape", List.of("lse"), f -> f.decode(f.q, f.table, f.out, f.t(DType.F32, 2, H / 2))));
        c.add(inv("decode lse rank 3", List.of("lse"), f -> f.decode(f.q, f.table, f.out, f.t(DType.F32, 2, H, 1))));
        c.add(inv("decode lse dtype F16", List.of("lse"), f -> f.decode(f.q, f.table, f.out, f.t(DType.F16, 2, H))));
        c.add(inv("decode lse closed arena", List.of("lse"), f -> f.decode(f.q, f.table, f.out, f.closed(DType.F32, 2, H))));
        // ---- decode: page tables ----
        c.add(inv("page id out of range", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 4}, new int[] {0, 1, PAGES, 3}, new int[] {8, 5}), f.out, f.lse)));
        c.add(inv("page id negative", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 4}, new int[] {0, -1, 2, 3}, new int[] {8, 5}), f.out, f.lse)));
        c.add(inv("indptr decreasing", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 2}, new int[] {0, 1, 2, 3}, new int[] {8, 5}), f.out, f.lse)));
        c.add(inv("indptr[0] != 0", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {1, 3, 4}, new int[] {0, 1, 2, 3}, new int[] {8, 5}), f.out, f.lse)));
        c.add(inv("indptr[batch] > indices length", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 5}, new int[] {0, 1, 2, 3}, new int[] {8, 5}), f.out, f.lse)));
        c.add(inv("last_page_len 0", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 4}, new int[] {0, 1, 2, 3}, new int[] {0, 5}), f.out, f.lse)));
        c.add(inv("last_page_len > page size", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 4}, new int[] {0, 1, 2, 3}, new int[] {8, PS + 1}), f.out,
                        f.lse)));
        c.add(inv("last_page_len negative", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 4}, new int[] {0, 1, 2, 3}, new int[] {8, -3}), f.out, f.lse)));
        c.add(inv("empty sequence (raw table)", TABLE,
                f -> f.decode(f.q, f.raw(new int[] {0, 3, 3}, new int[] {0, 1, 2}, new int[] {8, 0}), f.out, f.lse)));
        c.add(inv("empty sequence (cache)", TABLE,
                f -> f.decode(f.q, f.cache.pageTable(f.seqA, f.seqEmpty), f.out, f.lse)));
        c.add(inv("table closed arena", List.of("table"), f -> {
            Arena a = Arena.ofConfined();
            PageTable t = PageTable.of(a, new int[] {0, 3, 4}, new int[] {0, 1, 2, 3}, new int[] {8, 5});
            a.close();
            f.decode(f.q, t, f.out, f.lse);
        }));
        c.add(inv("table null", List.of("table"), f -> f.decode(f.q, null, f.out, f.lse)));
        c.add(inv("PageTable.of lengths", List.of("indptr"),
                f -> PageTable.of(f.arena, new int[] {0, 1}, new int[] {0}, new int[] {1, 1})));
        c.add(inv("batch > maxBatch", List.of("table", "q", "batch", "max_batch_size", "maxBatch"), f -> {
            int s3 = f.cache.fork(f.seqB);
            try {
                f.decode(f.f32(3, H, D), f.cache.pageTable(f.seqA, f.seqB, s3), f.t(DType.F32, 3, H, D),
                        f.t(DType.F32, 3, H));
            } finally {
                f.cache.free(s3);
            }
        }));
        c.add(inv("layer out of range", List.of("layer"), f -> f.plan.run(f.q, f.cache, 1, f.table, f.out, f.lse)));
        c.add(inv("cache null", List.of("cache"), f -> f.plan.run(f.q, null, 0, f.table, f.out, f.lse)));
        c.add(inv("cache dtype differs from plan", List.of("cache", "kv_dtype", "dtype"),
                f -> otherCache(f, DType.F16, KVH, D, PS)));
        c.add(inv("cache kvHeads differ from plan", List.of("cache", "num_kv_heads", "kvHeads"),
                f -> otherCache(f, DType.BF16, 1, D, PS)));
        c.add(inv("cache headDim differs from plan", List.of("cache", "head_dim", "headDim"),
                f -> otherCache(f, DType.BF16, KVH, 2 * D, PS)));
        c.add(inv("cache pageSize differs from plan", List.of("cache", "page_size", "pageSize"),
                f -> otherCache(f, DType.BF16, KVH, D, 2 * PS)));

        // ---- plan creation ----
        c.add(inv("qoHeads not a multiple of kvHeads", List.of("qoHeads"),
                f -> Attention.decode(lib).forCache(f.cache).qoHeads(7).build()));
        c.add(inv("qoHeads 0", List.of("qoHeads"), f -> Attention.prefill(lib).kvHeads(1).headDim(64).build()));
        c.add(inv("kvHeads 0", List.of("kvHeads"), f -> Attention.prefill(lib).qoHeads(4).headDim(64).build()));
        c.add(inv("headDim 0", List.of("headDim"), f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).build()));
        c.add(unsupportedOrInvalid("headDim 72 (not a multiple of 16)", List.of("head_dim", "headDim"),
                f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).headDim(72).build().close()));
        c.add(unsupportedOrInvalid("headDim 512", List.of("head_dim", "headDim"),
                f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).headDim(512).build().close()));
        c.add(inv("scale negative", List.of("scale"),
                f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).headDim(64).scale(-1f).build()));
        c.add(inv("scale infinite", List.of("scale"),
                f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).headDim(64).scale(Float.POSITIVE_INFINITY).build()));
        c.add(inv("maxBatch 0", List.of("maxBatch"),
                f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).headDim(64).maxBatch(0).build()));
        c.add(inv("decode plan without page size", List.of("pageSize"),
                f -> Attention.decode(lib).qoHeads(4).kvHeads(1).headDim(64).build()));
        c.add(inv("qDType I32", List.of("qDType"),
                f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).headDim(64).qDType(DType.I32).build()));
        c.add(inv("kvDType null", List.of("kvDType"),
                f -> Attention.prefill(lib).qoHeads(4).kvHeads(1).headDim(64).kvDType(null).build()));
        c.add(inv("plan lib null", List.of("lib"), f -> Attention.decode(null)));

        // ---- prefill (contiguous) ----
        List<String> qoi = List.of("qo_indptr", "qoIndptr");
        List<String> kvi = List.of("kv_indptr", "kvIndptr");
        List<String> anyIndptr = List.of("qo_indptr", "qoIndptr", "kv_indptr", "kvIndptr");
        c.add(inv("causal n_kv < n_q", anyIndptr,
                f -> f.prefill(f.pq, f.qoIndptr, f.pk, f.pv, Tensor.ofInts(f.arena, 0, 2, 20), f.pout, f.plse)));
        c.add(inv("qo_indptr batch != kv_indptr batch", anyIndptr,
                f -> f.prefill(f.pq, Tensor.ofInts(f.arena, 0, 10), f.pk, f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("qo_indptr end != nnz_q", List.of("qo_indptr", "qoIndptr", "q"),
                f -> f.prefill(f.pq, Tensor.ofInts(f.arena, 0, 4, 11), f.pk, f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("qo_indptr decreasing", qoi,
                f -> f.prefill(f.pq, Tensor.ofInts(f.arena, 0, 11, 10), f.pk, f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("qo_indptr[0] != 0", qoi,
                f -> f.prefill(f.pq, Tensor.ofInts(f.arena, 1, 4, 10), f.pk, f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("qo_indptr dtype F32", qoi, f -> f.prefill(f.pq, Tensor.ofFloats(f.arena, DType.F32,
                new float[] {0, 4, 10}, 3), f.pk, f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("qo_indptr rank 2", qoi, f -> f.prefill(f.pq, Tensor.of(Tensor.ofInts(f.arena, 0, 4, 10).segment(),
                DType.I32, 1, 3), f.pk, f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("kv_indptr end > nnz_kv", List.of("kv_indptr", "kvIndptr", "k"),
                f -> f.prefill(f.pq, f.qoIndptr, f.pk, f.pv, Tensor.ofInts(f.arena, 0, 8, 21), f.pout, f.plse)));
        c.add(inv("kv_indptr decreasing", kvi,
                f -> f.prefill(f.pq, f.qoIndptr, f.pk, f.pv, Tensor.ofInts(f.arena, 0, 21, 20), f.pout, f.plse)));
        c.add(inv("prefill k heads", List.of("k"), f -> f.prefill(f.pq, f.qoIndptr,
                f.t(DType.BF16, 20, 1, D), f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill k dtype", List.of("k"), f -> f.prefill(f.pq, f.qoIndptr,
                f.t(DType.F16, 20, KVH, D), f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill v rows != k rows", List.of("v"), f -> f.prefill(f.pq, f.qoIndptr, f.pk,
                f.t(DType.BF16, 19, KVH, D), f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill q headDim", List.of("q"), f -> f.prefill(f.f32(10, H, D + 16), f.qoIndptr, f.pk, f.pv,
                f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill q NaN", List.of("q"), f -> f.prefill(f.withValue(f.pq, 5, Float.NaN), f.qoIndptr, f.pk, f.pv,
                f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill k NaN", List.of("k"), f -> f.prefill(f.pq, f.qoIndptr, f.withValue(f.pk, 100, Float.NaN),
                f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill v +Inf", List.of("v"), f -> f.prefill(f.pq, f.qoIndptr, f.pk,
                f.withValue(f.pv, 20 * KVH * D - 1, Float.POSITIVE_INFINITY), f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill out shape", List.of("out"), f -> f.prefill(f.pq, f.qoIndptr, f.pk, f.pv, f.kvIndptr,
                f.t(DType.F32, 9, H, D), f.plse)));
        c.add(inv("prefill lse shape", List.of("lse"), f -> f.prefill(f.pq, f.qoIndptr, f.pk, f.pv, f.kvIndptr, f.pout,
                f.t(DType.F32, 10, H + 1))));
        c.add(inv("prefill k closed arena", List.of("k"), f -> f.prefill(f.pq, f.qoIndptr,
                f.closed(DType.BF16, 20, KVH, D), f.pv, f.kvIndptr, f.pout, f.plse)));
        c.add(inv("prefill batch > maxBatch", List.of("qo_indptr", "qoIndptr", "batch", "max_batch_size", "maxBatch"),
                f -> f.prefill(f.pq, Tensor.ofInts(f.arena, 0, 2, 4, 10), f.pk, f.pv, Tensor.ofInts(f.arena, 0, 2, 8, 20),
                        f.pout, f.plse)));
        // ---- prefill (paged) ----
        c.add(inv("paged prefill table batch != qo_indptr batch", List.of("table", "qo_indptr", "qoIndptr"),
                f -> f.pagedPrefill(Tensor.ofInts(f.arena, 0, 9), f.table)));
        c.add(inv("paged prefill causal n_kv < n_q", List.of("table", "qo_indptr", "qoIndptr", "q"),
                f -> f.pagedPrefill(f.pagedIndptr, f.raw(new int[] {0, 1, 2}, new int[] {0, 3}, new int[] {2, 16}))));
        c.add(inv("paged prefill page id out of range", TABLE,
                f -> f.pagedPrefill(f.pagedIndptr, f.raw(new int[] {0, 3, 4}, new int[] {0, 1, PAGES + 7, 3},
                        new int[] {8, 5}))));

        // ---- mergeStates ----
        c.add(inv("merge v rank 3", List.of("v"), f -> f.merge(f.f32(3, 2, H * D), f.ms, f.mOut, f.msOut)));
        c.add(inv("merge s shape", List.of("s"), f -> f.merge(f.mv, f.f32(3, 3, H), f.mOut, f.msOut)));
        c.add(inv("merge s dtype F16", List.of("s"), f -> f.merge(f.mv, f.t(DType.F16, 3, 2, H), f.mOut, f.msOut)));
        c.add(inv("merge v dtype I32", List.of("v"), f -> f.merge(f.t(DType.I32, 3, 2, H, D), f.ms, f.mOut, f.msOut)));
        c.add(inv("merge vOut shape", List.of("vOut", "v_out"), f -> f.merge(f.mv, f.ms, f.t(DType.F32, 3, H, D / 2),
                f.msOut)));
        c.add(inv("merge sOut shape", List.of("sOut", "s_out"), f -> f.merge(f.mv, f.ms, f.mOut, f.t(DType.F32, 2, H))));
        c.add(inv("merge s NaN", List.of("s"), f -> f.merge(f.mv, f.withValue(f.ms, 3, Float.NaN), f.mOut, f.msOut)));
        c.add(inv("merge v NaN", List.of("v"), f -> f.merge(f.withValue(f.mv, 3, Float.NaN), f.ms, f.mOut, f.msOut)));
        c.add(inv("merge vOut closed arena", List.of("vOut"), f -> f.merge(f.mv, f.ms, f.closed(DType.F32, 3, H, D),
                f.msOut)));
        c.add(inv("merge lib null", List.of("lib"), f -> Attention.mergeStates(null, f.mv, f.ms, f.mOut, f.msOut)));

        // ---- devices and library ----
        c.add(inv("Device.cuda(-1)", List.of("device"), f -> Device.cuda(-1)));
        c.add(inv("cpu device index 1", List.of("device"), f -> new Device(Device.Kind.CPU, 1)));
        c.add(inv("open null device", List.of("device"), f -> Attn4j.open(null)));
        c.add(inv("open negative threads", List.of("threads"), f -> Attn4j.open(Device.cpu(), -1)));
        c.add(inv("measureReadBandwidth 0 bytes", List.of("bytes"), f -> lib.measureReadBandwidth(0, 1)));

        // ---- cache writes ----
        c.add(inv("append k NaN", List.of("k"), f -> f.cache.append(new int[] {f.seqB}, new int[] {2},
                f.withValue(f.f32(2, KVH, D), 1, Float.NaN), f.f32(2, KVH, D))));
        c.add(inv("append v -Inf", List.of("v"), f -> f.cache.append(new int[] {f.seqB}, new int[] {2},
                f.f32(2, KVH, D), f.withValue(f.f32(2, KVH, D), 200, Float.NEGATIVE_INFINITY))));
        c.add(inv("append k dtype I32", List.of("k"), f -> f.cache.append(new int[] {f.seqB}, new int[] {2},
                f.t(DType.I32, 2, KVH, D), f.f32(2, KVH, D))));
        c.add(inv("append v shape", List.of("v"), f -> f.cache.append(new int[] {f.seqB}, new int[] {2},
                f.f32(2, KVH, D), f.f32(2, KVH, D + 16))));
        c.add(inv("append k closed arena", List.of("k"), f -> f.cache.append(new int[] {f.seqB}, new int[] {2},
                f.closed(DType.F32, 2, KVH, D), f.f32(2, KVH, D))));

        // ---- closed objects ----
        c.add(ise("closed decode plan", f -> {
            DecodePlan p = Attention.decode(lib).forCache(f.cache).qoHeads(H).qDType(DType.F32).outDType(DType.F32)
                    .maxBatch(2).build();
            p.close();
            p.close();
            p.run(f.q, f.cache, 0, f.table, f.out, f.lse);
        }));
        c.add(ise("closed prefill plan", f -> {
            PrefillPlan p = Attention.prefill(lib).qoHeads(H).kvHeads(KVH).headDim(D).qDType(DType.F32)
                    .kvDType(DType.BF16).outDType(DType.F32).maxBatch(2).build();
            p.close();
            p.run(f.pq, f.qoIndptr, f.pk, f.pv, f.kvIndptr, f.pout, f.plse);
        }));
        c.add(ise("closed cache in decode", f -> {
            PagedKvCache other = PagedKvCache.builder(lib).kvHeads(KVH).headDim(D).pageSize(PS).numPages(4)
                    .dtype(DType.BF16).build();
            int s = other.newSequence();
            other.append(new int[] {s}, new int[] {3}, f.f32(3, KVH, D), f.f32(3, KVH, D));
            PageTable t = other.pageTable(s);
            other.close();
            f.plan.run(f.f32(1, H, D), other, 0, t, f.t(DType.F32, 1, H, D), null);
        }));
        c.add(ise("closed lib: plan build", f -> {
            Attn4j l = Attn4j.open(Device.cpu(), 1);
            l.close();
            l.close();
            Attention.prefill(l).qoHeads(4).kvHeads(1).headDim(64).build();
        }));
        c.add(ise("closed lib: mergeStates", f -> {
            Attn4j l = Attn4j.open(Device.cpu(), 1);
            l.close();
            Attention.mergeStates(l, f.mv, f.ms, f.mOut, f.msOut);
        }));
        c.add(ise("closed lib: cache write", f -> {
            Attn4j l = Attn4j.open(Device.cpu(), 1);
            PagedKvCache other = PagedKvCache.builder(l).kvHeads(KVH).headDim(D).pageSize(PS).numPages(4).build();
            try {
                int s = other.newSequence();
                l.close();
                other.append(new int[] {s}, new int[] {3}, f.f32(3, KVH, D), f.f32(3, KVH, D));
            } finally {
                other.close();
            }
        }));
        return c.stream();
    }

    private static void otherCache(Fx f, DType dtype, int kvHeads, int headDim, int pageSize) {
        try (PagedKvCache other = PagedKvCache.builder(lib).kvHeads(kvHeads).headDim(headDim).pageSize(pageSize)
                .numPages(8).dtype(dtype).build()) {
            int s = other.newSequence();
            int s2 = other.newSequence();
            Tensor k = Tensor.allocate(f.arena, DType.F32, 40, kvHeads, headDim);
            k.fill(0.25f);
            other.append(new int[] {s, s2}, new int[] {20, 20}, k, k);
            f.plan.run(f.q, other, 0, other.pageTable(s, s2), f.out, f.lse);
        }
    }

    @Test
    void validFixtureRuns() {
        fx.decode();
        fx.prefill();
        fx.pagedPrefill(fx.pagedIndptr, fx.table);
        fx.pagedPrefill(fx.pagedIndptr, fx.raw(new int[] {0, 3, 4}, concat(fx.cache.pageTable(fx.seqA).indices(),
                fx.cache.pageTable(fx.seqB).indices()), new int[] {8, 5}));
        fx.merge();
    }

    private static int[] concat(int[] a, int[] b) {
        int[] c = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, c, a.length, b.length);
        return c;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void rejected(Case c) {
        long freeBefore = fx.cache.freePageCount();
        long lenA = fx.cache.length(fx.seqA);
        long lenB = fx.cache.length(fx.seqB);
        if (c.status.isEmpty()) {
            assertThrows(IllegalStateException.class, () -> c.action.accept(fx), c.name);
        } else {
            Attn4jException e = assertThrows(Attn4jException.class, () -> c.action.accept(fx), c.name);
            assertTrue(c.status.contains(e.status()), () -> c.name + ": status " + e.status() + " not in " + c.status
                    + ": " + e.getMessage());
            Checks.assertNames(e.getMessage(), c.names);
        }
        // nothing changed, and valid calls still work
        assertEquals(freeBefore, fx.cache.freePageCount(), "free pages after " + c.name);
        assertEquals(lenA, fx.cache.length(fx.seqA));
        assertEquals(lenB, fx.cache.length(fx.seqB));
        fx.decode();
    }

    @Test
    void cudaWithoutDeviceFailsClearly() {
        Assumptions.assumeTrue(Attn4j.cudaDeviceCount() == 0, "a CUDA device is present: covered by GpuTest");
        Attn4jException e = assertThrows(Attn4jException.class, () -> Attn4j.open(Device.cuda(0)).close());
        assertTrue(e.status() == Status.DEVICE || e.status() == Status.UNSUPPORTED, e::getMessage);
        Checks.assertNames(e.getMessage(), List.of("device", "cuda", "cuda:0", "device_type", "device_id"));
    }
}
