package org.attn4j.testing;

import java.lang.foreign.Arena;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.attn4j.DType;
import org.attn4j.PagedKvCache;
import org.attn4j.Tensor;

/**
 * Drives a {@link PagedKvCache} through its public API (newSequence, reserve/write, append, fork,
 * free) while keeping, per layer and sequence, the exact K/V values the cache must hold (inputs
 * rounded to the tensor dtype, then to the cache dtype). The reference attends over these
 * per-sequence copies, so a wrong page mapping anywhere shows up as a wrong result.
 */
public final class KvMirror {
    private final PagedKvCache cache;
    private final KvGen gen;
    private final DType inputType;
    private final OnDevice device;
    private final int row;
    private final Map<Integer, float[][]> k = new HashMap<>(); // seq -> [layer][len * row]
    private final Map<Integer, float[][]> v = new HashMap<>();
    private final Map<Integer, Integer> len = new HashMap<>();

    public KvMirror(PagedKvCache cache, KvGen gen, DType inputType) {
        this(cache, gen, inputType, null);
    }

    /** K/V written through {@code device} (needed for a cache on a CUDA device). */
    public KvMirror(PagedKvCache cache, KvGen gen, DType inputType, OnDevice device) {
        this.cache = cache;
        this.gen = gen;
        this.inputType = inputType;
        this.device = device;
        this.row = cache.kvHeads() * cache.headDim();
    }

    public PagedKvCache cache() {
        return cache;
    }

    public int newSequence() {
        int s = cache.newSequence();
        k.put(s, new float[cache.layers()][0]);
        v.put(s, new float[cache.layers()][0]);
        len.put(s, 0);
        return s;
    }

    public int fork(int seq) {
        int s = cache.fork(seq);
        k.put(s, deepCopy(k.get(seq)));
        v.put(s, deepCopy(v.get(seq)));
        len.put(s, len.get(seq));
        return s;
    }

    public void free(int seq) {
        cache.free(seq);
        k.remove(seq);
        v.remove(seq);
        len.remove(seq);
    }

    public int length(int seq) {
        return len.get(seq);
    }

    /** K of sequence {@code seq} in layer {@code layer}: [len][kvHeads][dim]. */
    public float[] keys(int layer, int seq) {
        return Arrays.copyOf(k.get(seq)[layer], len.get(seq) * row);
    }

    public float[] values(int layer, int seq) {
        return Arrays.copyOf(v.get(seq)[layer], len.get(seq) * row);
    }

    /**
     * Grows {@code seqs[i]} by {@code counts[i]} fresh tokens in every layer: one reserve, then one
     * write per layer (or {@link PagedKvCache#append} for single-layer caches when
     * {@code useAppend}). Returns the reservation.
     */
    public PagedKvCache.Reservation append(Arena arena, int[] seqs, int[] counts, boolean useAppend) {
        int total = 0;
        for (int c : counts) {
            total += c;
        }
        int layers = cache.layers();
        float[][] newK = new float[layers][];
        float[][] newV = new float[layers][];
        for (int l = 0; l < layers; l++) {
            newK[l] = new float[total * row];
            newV[l] = new float[total * row];
            int off = 0;
            for (int i = 0; i < seqs.length; i++) {
                float[] kk = gen.keys(len.get(seqs[i]), counts[i]);
                float[] vv = gen.values(counts[i]);
                System.arraycopy(kk, 0, newK[l], off, kk.length);
                System.arraycopy(vv, 0, newV[l], off, vv.length);
                off += kk.length;
            }
        }
        long[] shape = {total, cache.kvHeads(), cache.headDim()};
        PagedKvCache.Reservation r;
        if (useAppend) {
            r = cache.append(seqs, counts, input(arena, newK[0], shape), input(arena, newV[0], shape));
        } else {
            r = cache.reserve(seqs, counts);
            for (int l = 0; l < layers; l++) {
                cache.write(l, r, input(arena, newK[l], shape), input(arena, newV[l], shape));
            }
        }
        // record what the cache must now hold
        for (int l = 0; l < layers; l++) {
            float[] kr = KvGen.round(newK[l], inputType, cache.dtype());
            float[] vr = KvGen.round(newV[l], inputType, cache.dtype());
            int off = 0;
            for (int i = 0; i < seqs.length; i++) {
                int s = seqs[i];
                int old = len.get(s);
                float[] ks = Arrays.copyOf(k.get(s)[l], (old + counts[i]) * row);
                float[] vs = Arrays.copyOf(v.get(s)[l], (old + counts[i]) * row);
                System.arraycopy(kr, off, ks, old * row, counts[i] * row);
                System.arraycopy(vr, off, vs, old * row, counts[i] * row);
                k.get(s)[l] = ks;
                v.get(s)[l] = vs;
                off += counts[i] * row;
            }
        }
        for (int i = 0; i < seqs.length; i++) {
            len.put(seqs[i], len.get(seqs[i]) + counts[i]);
        }
        return r;
    }

    private Tensor input(Arena arena, float[] values, long[] shape) {
        Tensor host = Tensor.ofFloats(arena, inputType, values, shape);
        return device == null ? host : device.put(host);
    }

    private static float[][] deepCopy(float[][] a) {
        float[][] c = new float[a.length][];
        for (int i = 0; i < a.length; i++) {
            c[i] = a[i].clone();
        }
        return c;
    }
}
