package org.attn4j;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

import org.attn4j.internal.Floats;

/**
 * Salience of a {@link TieredKvCache}'s window tokens (ZipCache's normalized attention score), from
 * probe queries: per sequence and layer a ring of the last {@code probes} queries with the
 * log-sum-exp of their attention, recorded by the decode runs (or given by the caller for a
 * prompt). The score of a token is the attention probability {@code exp(scale q.k - lse)} it gets
 * relative to a uniform share (times the number of tokens the probe attended to), averaged over
 * the probes that see it (causal), the query heads and the layers: a score above 1 means recent
 * queries looked at the token more than at an average one, so its quantization error would reach
 * the output.
 *
 * <p>Rings are sized once per sequence slot (the query-head count is fixed by the first probe) and
 * reused, so recording and scoring allocate nothing in steady state. Not thread-safe.
 */
final class TokenSalience {
    private final int layers;
    private final int kvHeads;
    private final int headDim;
    private final int pageSize;
    private final int probes;
    private int qoHeads = -1; // fixed by the first probe
    private Ring[] rings = new Ring[16];
    private float[] keys; // one page of one layer, [kvHeads][pageSize][headDim]

    /** The probes of one sequence: per layer {@code probes} queries, oldest overwritten first. */
    private static final class Ring {
        final float[][] q; // [layer][probe * qoHeads * headDim]
        final float[][] lse; // [layer][probe * qoHeads]
        final float[][] scale; // [layer][probe]
        final long[][] visible; // [layer][probe]: tokens the probe attended to (it sees positions below)
        final int[] count; // [layer]
        final int[] next; // [layer]

        Ring(int layers, int probes, int qoHeads, int headDim) {
            q = new float[layers][probes * qoHeads * headDim];
            lse = new float[layers][probes * qoHeads];
            scale = new float[layers][probes];
            visible = new long[layers][probes];
            count = new int[layers];
            next = new int[layers];
        }

        void clear() {
            Arrays.fill(count, 0);
            Arrays.fill(next, 0);
        }

        void copyFrom(Ring o) {
            for (int l = 0; l < q.length; l++) {
                System.arraycopy(o.q[l], 0, q[l], 0, q[l].length);
                System.arraycopy(o.lse[l], 0, lse[l], 0, lse[l].length);
                System.arraycopy(o.scale[l], 0, scale[l], 0, scale[l].length);
                System.arraycopy(o.visible[l], 0, visible[l], 0, visible[l].length);
            }
            System.arraycopy(o.count, 0, count, 0, count.length);
            System.arraycopy(o.next, 0, next, 0, next.length);
        }
    }

    TokenSalience(int layers, int kvHeads, int headDim, int pageSize, int probes) {
        this.layers = layers;
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.pageSize = pageSize;
        this.probes = probes;
    }

    int probes() {
        return probes;
    }

    /** Forgets the probes of sequence slot {@code seq} (a new, freed or reused sequence). */
    void clear(int seq) {
        if (seq < rings.length && rings[seq] != null) {
            rings[seq].clear();
        }
    }

    /** Sequence {@code to} starts with the probes of {@code from} (a fork). */
    void copy(int from, int to) {
        Ring src = from < rings.length ? rings[from] : null;
        if (src == null) {
            clear(to);
            return;
        }
        ring(to).copyFrom(src);
    }

    /** Probes recorded for (seq, layer). */
    int count(int seq, int layer) {
        return seq < rings.length && rings[seq] != null ? rings[seq].count[layer] : 0;
    }

    /**
     * Records row {@code row} of {@code q} ([rows, qoHeads, headDim], host) with its log-sum-exp
     * row of {@code lse} (F32 [rows, qoHeads]) under softmax scale {@code scale}: a query that
     * attended to the first {@code visible} tokens of sequence {@code seq}.
     */
    void record(int seq, int layer, Tensor q, Tensor lse, long row, float scale, long visible) {
        int heads = (int) q.shape(1);
        if (qoHeads < 0) {
            qoHeads = heads;
        } else if (heads != qoHeads) {
            throw Attn4jException.invalid("q: " + heads + " query heads, but this cache's salience probes have "
                    + qoHeads + " (fixed by the first decode or observe call)");
        }
        Ring r = ring(seq);
        int slot = r.next[layer];
        float[] dq = r.q[layer];
        int base = slot * qoHeads * headDim;
        if (q.stride(2) == 1 && q.stride(1) == headDim) {
            // A contiguous row: read it straight (getFlat's index arithmetic per element cost more than the scoring).
            MemorySegment seg = q.segment();
            long at = row * q.stride(0);
            int n = qoHeads * headDim;
            for (int i = 0; i < n; i++) {
                dq[base + i] = switch (q.dtype()) {
                    case F32 -> seg.getAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, at + i);
                    case BF16 -> Floats.fromBf16(seg.getAtIndex(ValueLayout.JAVA_SHORT_UNALIGNED, at + i));
                    case F16 -> Floats.fromF16(seg.getAtIndex(ValueLayout.JAVA_SHORT_UNALIGNED, at + i));
                    default -> throw Attn4jException.invalid("q: dtype " + q.dtype() + ", expected F32, F16 or BF16");
                };
            }
        } else {
            long src = row * qoHeads * headDim;
            for (int i = 0; i < qoHeads * headDim; i++) {
                dq[base + i] = q.getFlat(src + i);
            }
        }
        for (int h = 0; h < qoHeads; h++) {
            r.lse[layer][slot * qoHeads + h] = lse.getFlat(row * qoHeads + h);
        }
        r.scale[layer][slot] = scale;
        r.visible[layer][slot] = visible;
        r.next[layer] = (slot + 1) % probes;
        r.count[layer] = Math.min(r.count[layer] + 1, probes);
    }

    /**
     * Adds to {@code score[first .. first + pageSize)} the salience of the tokens of BF16 page
     * {@code page} of {@code cache} (layer {@code layer}), which sit at positions
     * {@code position ..} of sequence {@code seq}; divided by {@code layers}, so that summing the
     * layers gives the mean. Returns false when no probe of this layer sees the page.
     */
    boolean addScores(int seq, int layer, PagedKvCache cache, int page, long position, float[] score, int first) {
        Ring r = seq < rings.length ? rings[seq] : null;
        if (r == null || r.count[layer] == 0) {
            return false;
        }
        if (keys == null) {
            keys = new float[kvHeads * pageSize * headDim];
        }
        cache.pageKeys(layer, page, keys);
        int group = qoHeads / kvHeads;
        float[] q = r.q[layer];
        boolean any = false;
        for (int t = 0; t < pageSize; t++) {
            long pos = position + t;
            int seeing = 0;
            double sum = 0;
            for (int i = 0; i < r.count[layer]; i++) {
                if (r.visible[layer][i] <= pos) {
                    continue; // the probe came before this token
                }
                seeing++;
                float s = r.scale[layer][i];
                double uniform = r.visible[layer][i]; // 1 / the share each token would get under uniform attention
                for (int h = 0; h < qoHeads; h++) {
                    int k = ((h / group) * pageSize + t) * headDim;
                    int qo = (i * qoHeads + h) * headDim;
                    sum += Math.exp(s * dot(q, qo, keys, k) - r.lse[layer][i * qoHeads + h]) * uniform;
                }
            }
            if (seeing > 0) {
                score[first + t] += (float) (sum / ((double) seeing * qoHeads * layers));
                any = true;
            }
        }
        return any;
    }

    /** q[qo ..] . k[ko ..] over headDim (a multiple of 16): four independent sums for the JIT to overlap. */
    private float dot(float[] q, int qo, float[] k, int ko) {
        float a = 0;
        float b = 0;
        float c = 0;
        float d = 0;
        for (int x = 0; x < headDim; x += 4) {
            a += q[qo + x] * k[ko + x];
            b += q[qo + x + 1] * k[ko + x + 1];
            c += q[qo + x + 2] * k[ko + x + 2];
            d += q[qo + x + 3] * k[ko + x + 3];
        }
        return (a + b) + (c + d);
    }

    private Ring ring(int seq) {
        if (seq >= rings.length) {
            rings = Arrays.copyOf(rings, Math.max(seq + 1, rings.length * 2));
        }
        if (rings[seq] == null) {
            if (qoHeads < 0) {
                throw new IllegalStateException("unreachable: a ring before the first probe");
            }
            rings[seq] = new Ring(layers, probes, qoHeads, headDim);
        }
        return rings[seq];
    }
}
