package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.internal.Native;

/**
 * A native plan (attn4j_plan): shapes and types fixed, workspace sized once, reusable for every
 * layer and step. Not thread-safe: one thread runs a plan at a time (plans own the descriptors
 * they pass to the kernels, which is what keeps runs allocation-free).
 */
public abstract sealed class Plan implements AutoCloseable permits DecodePlan, PrefillPlan {
    final AttentionConfig config;
    final Device device;
    final Arena arena;
    private MemorySegment handle;

    interface Creator {
        int create(MemorySegment ctx, MemorySegment desc, MemorySegment out);
    }

    Plan(Attn4j lib, AttentionConfig config, Creator creator, String what) {
        this.config = config;
        this.device = lib.device();
        this.arena = Arena.ofConfined();
        try {
            MemorySegment out = arena.allocate(ValueLayout.ADDRESS);
            Native.check(creator.create(lib.handle(), config.toNative(arena), out), what);
            this.handle = out.get(ValueLayout.ADDRESS, 0);
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    final MemorySegment handle() {
        if (handle == null) {
            throw new IllegalStateException("plan: closed");
        }
        return handle;
    }

    /** Where the plan runs: tensors, caches and page tables it is given must live there. */
    public Device device() {
        return device;
    }

    public int qoHeads() {
        return config.qoHeads();
    }

    public int kvHeads() {
        return config.kvHeads();
    }

    public int headDim() {
        return config.headDim();
    }

    public float scale() {
        return config.scale();
    }

    public DType qDType() {
        return config.qDType();
    }

    public DType kvDType() {
        return config.kvDType();
    }

    public DType outDType() {
        return config.outDType();
    }

    public int maxBatch() {
        return config.maxBatch();
    }

    @Override
    public void close() {
        if (handle != null) {
            Attn4jNative.attn4j_plan_destroy(handle);
            handle = null;
            arena.close();
        }
    }
}
