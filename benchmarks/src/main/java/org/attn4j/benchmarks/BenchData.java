package org.attn4j.benchmarks;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;

import org.attn4j.DType;
import org.attn4j.PagedKvCache;
import org.attn4j.Tensor;

/** Shared set-up for the benchmarks: random tensors, filled caches, cache-defeating rotation. */
final class BenchData {
    private BenchData() {}

    /** Fills {@code t} with N(0, 1) values. */
    static Tensor random(Tensor t, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        long n = t.elementCount();
        for (long i = 0; i < n; i++) {
            t.setFlat(i, (float) nextGaussian(r));
        }
        return t;
    }

    private static double nextGaussian(SplittableRandom r) {
        // Box-Muller; quality is irrelevant here, speed is not
        double u = 1.0 - r.nextDouble();
        return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r.nextDouble());
    }

    /**
     * How many layers of {@code bytesPerLayer} to rotate over so the last-level cache cannot hold them:
     * at least 2, enough for twice the LLC, at most {@code capBytes} in all.
     */
    static int rotationLayers(long bytesPerLayer, long capBytes) {
        long llc = lastLevelCacheBytes();
        long target = llc > 0 ? 2 * llc : 512L << 20;
        long want = (target + bytesPerLayer - 1) / bytesPerLayer;
        long cap = Math.max(2, capBytes / bytesPerLayer);
        return (int) Math.max(2, Math.min(want, cap));
    }

    static long lastLevelCacheBytes() {
        long best = -1;
        for (int i = 0; i < 8; i++) {
            Path size = Path.of("/sys/devices/system/cpu/cpu0/cache/index" + i + "/size");
            try {
                List<String> l = Files.readAllLines(size);
                String s = l.get(0).strip().toUpperCase();
                long mult = s.endsWith("K") ? 1024 : s.endsWith("M") ? 1 << 20 : 1;
                long v = Long.parseLong(s.replaceAll("[^0-9]", "")) * mult;
                best = Math.max(best, v);
            } catch (Exception e) {
                break;
            }
        }
        return best;
    }

    /** Appends {@code tokens} random tokens to a new sequence in every layer of {@code cache}; returns its id. */
    static int fillSequence(PagedKvCache cache, long tokens, long seed) {
        int seq = cache.newSequence();
        int chunk = 4096;
        try (Arena arena = Arena.ofConfined()) {
            DType t = cache.dtype();
            Tensor[] ks = new Tensor[2];
            Tensor[] vs = new Tensor[2];
            for (int i = 0; i < 2; i++) {
                ks[i] = random(Tensor.allocate(arena, t, chunk, cache.kvHeads(), cache.headDim()), seed + i);
                vs[i] = random(Tensor.allocate(arena, t, chunk, cache.kvHeads(), cache.headDim()), seed + 10 + i);
            }
            int c = 0;
            for (long pos = 0; pos < tokens; pos += chunk, c++) {
                int n = (int) Math.min(chunk, tokens - pos);
                PagedKvCache.Reservation r = cache.reserve(new int[] {seq}, new int[] {n});
                for (int l = 0; l < cache.layers(); l++) {
                    cache.write(l, r, rows(ks[(c + l) & 1], n), rows(vs[(c + l) & 1], n));
                }
            }
        }
        return seq;
    }

    /** The first {@code n} rows of a contiguous [rows, heads, d] tensor. */
    static Tensor rows(Tensor t, int n) {
        if (n == t.shape(0)) {
            return t;
        }
        MemorySegment s = t.segment().asSlice(0, (long) n * t.shape(1) * t.shape(2) * t.dtype().byteSize());
        return Tensor.of(s, t.dtype(), n, t.shape(1), t.shape(2));
    }
}
