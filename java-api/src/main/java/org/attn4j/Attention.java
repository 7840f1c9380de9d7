package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_tensor;
import org.attn4j.internal.Native;

/**
 * Entry point for attention plans (FlashInfer's plan/run): build a plan once per shape, run it
 * for every layer and step.
 *
 * <pre>{@code
 * try (DecodePlan plan = Attention.decode(lib).forCache(cache).qoHeads(32).maxBatch(8).build()) {
 *     plan.run(q, cache, layer, table, out);
 * }
 * }</pre>
 */
public final class Attention {
    private Attention() {}

    /** A paged decode plan builder. */
    public static DecodePlan.Builder decode(Attn4j lib) {
        return new DecodePlan.Builder(lib);
    }

    /** A ragged-batch prefill plan builder. */
    public static PrefillPlan.Builder prefill(Attn4j lib) {
        return new PrefillPlan.Builder(lib);
    }

    /**
     * Merges attention states computed over disjoint parts of the keys (split-KV, cascades,
     * several devices): {@code v} [n, states, heads, headDim] with log-sum-exp {@code s}
     * [n, states, heads] (F32, natural log; -inf marks an empty part) into {@code vOut}
     * [n, heads, headDim] and, when not null, {@code sOut} [n, heads].
     */
    public static void mergeStates(Attn4j lib, Tensor v, Tensor s, Tensor vOut, Tensor sOut) {
        if (lib == null) {
            throw Attn4jException.invalid("lib: null");
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment vd = attn4j_tensor.allocate(arena);
            MemorySegment sd = attn4j_tensor.allocate(arena);
            MemorySegment od = attn4j_tensor.allocate(arena);
            MemorySegment so = MemorySegment.NULL;
            NativeTensor.fill(vd, v, "v");
            NativeTensor.fill(sd, s, "s");
            NativeTensor.fill(od, vOut, "vOut");
            if (sOut != null) {
                so = attn4j_tensor.allocate(arena);
                NativeTensor.fill(so, sOut, "sOut");
            }
            Native.check(Attn4jNative.attn4j_merge_states(lib.handle(), vd, sd, od, so), "mergeStates");
        }
    }
}
