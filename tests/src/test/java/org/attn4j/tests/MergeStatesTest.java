package org.attn4j.tests;

import java.lang.foreign.Arena;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

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
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/** mergeStates: attention over split keys, merged by LSE, equals attention over all keys. */
class MergeStatesTest extends LibFixture {

    record MergeCase(int rows, int states, int heads, int dim, DType vType, DType outType, boolean withEmpty,
            boolean sOut, long seed) {
        @Override
        public String toString() {
            return "n=" + rows + " states=" + states + " heads=" + heads + " d=" + dim + " v=" + vType + " out="
                    + outType + (withEmpty ? " empty-part" : "") + (sOut ? " sOut" : "") + " seed=" + seed;
        }
    }

    static Stream<MergeCase> cases() {
        Random rnd = new Random(Checks.baseSeed() + 30);
        List<MergeCase> cases = new ArrayList<>();
        DType[] t = {DType.F32, DType.F16, DType.BF16};
        int n = 0;
        for (DType v : t) {
            for (DType o : t) {
                cases.add(new MergeCase(1 + rnd.nextInt(9), 2 + rnd.nextInt(4), 1 + rnd.nextInt(8),
                        n % 2 == 0 ? 128 : 64, v, o, n % 3 == 0, n % 2 == 1, rnd.nextLong()));
                n++;
            }
        }
        cases.add(new MergeCase(3, 1, 4, 64, DType.F32, DType.F32, false, true, rnd.nextLong()));
        cases.add(new MergeCase(5, 7, 2, 256, DType.F32, DType.F32, true, true, rnd.nextLong()));
        return cases.stream();
    }

    /** Parts from the reference, merged by the library, against the reference over all keys. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    @Tag("isa")
    void mergeOfSplitKeysEqualsWhole(MergeCase c) {
        runMerge(c);
    }

    static void runMerge(MergeCase c) {
        int kvHeads = 1;
        int h = c.heads;
        int d = c.dim;
        KvGen gen = new KvGen(c.seed, kvHeads, d);
        Random rnd = gen.random();
        int nkv = c.states * 8 + rnd.nextInt(64);
        float[] q = gen.queries(c.rows, h);
        float[] k = gen.keys(0, nkv);
        float[] v = gen.values(nkv);
        double scale = 1 / Math.sqrt(d);
        // random split points; with withEmpty, one part is empty (-inf LSE, garbage values)
        int[] cut = new int[c.states + 1];
        cut[c.states] = nkv;
        for (int i = 1; i < c.states; i++) {
            cut[i] = 1 + rnd.nextInt(nkv - 1);
        }
        Arrays.sort(cut, 1, c.states);
        int empty = c.withEmpty ? rnd.nextInt(c.states) : -1;
        float[] vs = new float[c.rows * c.states * h * d];
        float[] ss = new float[c.rows * c.states * h];
        for (int st = 0; st < c.states; st++) {
            int from = cut[st];
            int to = st == empty ? from : cut[st + 1];
            ReferenceAttention.Result part = to > from ? ReferenceAttention.attend(q, 0, k, v, from * kvHeads * d,
                    c.rows, to - from, h, kvHeads, d, scale, false) : null;
            for (int i = 0; i < c.rows; i++) {
                for (int hh = 0; hh < h; hh++) {
                    int sIdx = (i * c.states + st) * h + hh;
                    ss[sIdx] = part == null ? Float.NEGATIVE_INFINITY : (float) part.lse()[i * h + hh];
                    for (int dd = 0; dd < d; dd++) {
                        vs[sIdx * d + dd] = part == null ? 1e3f * (dd % 7 + 1) : (float) part.out()[(i * h + hh) * d + dd];
                    }
                }
            }
        }
        if (empty >= 0 && empty < c.states - 1) {
            // the empty part's keys were skipped: drop them from the whole as well
            int from = cut[empty];
            int to = cut[empty + 1];
            float[] k2 = new float[(nkv - (to - from)) * kvHeads * d];
            float[] v2 = new float[k2.length];
            System.arraycopy(k, 0, k2, 0, from * kvHeads * d);
            System.arraycopy(k, to * kvHeads * d, k2, from * kvHeads * d, (nkv - to) * kvHeads * d);
            System.arraycopy(v, 0, v2, 0, from * kvHeads * d);
            System.arraycopy(v, to * kvHeads * d, v2, from * kvHeads * d, (nkv - to) * kvHeads * d);
            k = k2;
            v = v2;
            nkv = k2.length / (kvHeads * d);
        } else if (empty == c.states - 1) {
            nkv = cut[empty];
        }
        float[] vRounded = KvGen.round(vs, c.vType);
        ReferenceAttention.Result whole = nkv > 0 ? ReferenceAttention.attend(q, 0, k, v, 0, c.rows, nkv, h, kvHeads, d,
                scale, false) : null;
        ReferenceAttention.Result merged = ReferenceAttention.merge(vRounded, ss, c.rows, c.states, h, d);
        try (Arena arena = Arena.ofConfined()) {
            Tensor vt = Tensor.ofFloats(arena, c.vType, vs, c.rows, c.states, h, d);
            Tensor st = Tensor.ofFloats(arena, DType.F32, ss, c.rows, c.states, h);
            Checks.Output out = Checks.Output.of(arena, c.outType, c.rows, h, d);
            Checks.Output sOut = c.sOut ? Checks.Output.of(arena, DType.F32, c.rows, h) : null;
            Attention.mergeStates(lib, vt, st, out.tensor, sOut == null ? null : sOut.tensor);
            float[] got = out.read("vOut", c.seed);
            double tol = Checks.tolerance(c.vType, c.outType);
            // against the merge reference on the exact (rounded) states, and against attention over all keys
            Checks.assertClose(got, merged.out(), tol, c + " vOut vs merge reference");
            if (whole != null) {
                Checks.assertClose(got, whole.out(), Math.max(tol, 1e-5), c + " vOut vs whole attention");
            }
            if (sOut != null) {
                float[] s = sOut.read("sOut", c.seed);
                Checks.assertClose(s, merged.lse(), 1e-5, c + " sOut vs merge reference");
            }
        }
    }

    /** Split-KV decode done by hand: a sequence's pages split into two page tables, merged. */
    @Test
    void splitPagesDecodeThenMergeEqualsWholeDecode() {
        long seed = Checks.baseSeed() + 31;
        int kvHeads = 2;
        int heads = 8;
        int d = 128;
        int ps = 16;
        int len = 16 * 9 + 5;
        try (Arena arena = Arena.ofConfined();
                PagedKvCache cache = PagedKvCache.builder(lib).kvHeads(kvHeads).headDim(d).pageSize(ps).numPages(16)
                        .dtype(DType.F32).build();
                DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(heads).qDType(DType.F32)
                        .outDType(DType.F32).build()) {
            KvGen gen = new KvGen(seed, kvHeads, d);
            KvMirror m = new KvMirror(cache, gen, DType.F32);
            int s = m.newSequence();
            m.append(arena, new int[] {s}, new int[] {len}, true);
            int[] pages = cache.pageTable(s).indices();
            int split = 4;
            PageTable head = PageTable.of(arena, new int[] {0, split}, Arrays.copyOf(pages, split), new int[] {ps});
            PageTable tail = PageTable.of(arena, new int[] {0, pages.length - split},
                    Arrays.copyOfRange(pages, split, pages.length), new int[] {len - (pages.length - 1) * ps});
            float[] q = gen.queries(1, heads);
            Tensor qt = Tensor.ofFloats(arena, DType.F32, q, 1, heads, d);
            Tensor v = Tensor.allocate(arena, DType.F32, 1, 2, heads, d);
            Tensor sv = Tensor.allocate(arena, DType.F32, 1, 2, heads);
            int part = 0;
            for (PageTable t : new PageTable[] {head, tail}) {
                Checks.Output o = Checks.Output.of(arena, DType.F32, 1, heads, d);
                Checks.Output l = Checks.Output.of(arena, DType.F32, 1, heads);
                plan.run(qt, cache, 0, t, o.tensor, l.tensor);
                float[] of = o.read("out part " + part, seed);
                float[] lf = l.read("lse part " + part, seed);
                for (int hh = 0; hh < heads; hh++) {
                    sv.setFlat(part * heads + hh, lf[hh]);
                    for (int dd = 0; dd < d; dd++) {
                        v.setFlat((part * heads + hh) * d + dd, of[hh * d + dd]);
                    }
                }
                part++;
            }
            Checks.Output out = Checks.Output.of(arena, DType.F32, 1, heads, d);
            Checks.Output lse = Checks.Output.of(arena, DType.F32, 1, heads);
            Attention.mergeStates(lib, v, sv, out.tensor, lse.tensor);
            ReferenceAttention.Result whole = ReferenceAttention.attend(q, 0, m.keys(0, s), m.values(0, s), 0, 1, len,
                    heads, kvHeads, d, plan.scale(), false);
            Checks.assertClose(out.read("vOut", seed), whole.out(), 1e-5, "merged split decode (seed " + seed + ")");
            Checks.assertClose(lse.read("sOut", seed), whole.lse(), 1e-5, "merged split lse (seed " + seed + ")");
        }
    }
}
