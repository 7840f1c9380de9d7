package org.attn4j;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import org.attn4j.bindings.attn4j_tensor;

/** Fills attn4j_tensor descriptors from {@link Tensor}s, with the checks Java can do cheaply. */
final class NativeTensor {
    private NativeTensor() {}

    /** Writes {@code t} into the descriptor {@code desc}; {@code name} names it in errors. */
    static void fill(MemorySegment desc, Tensor t, String name) {
        if (t == null) {
            throw Attn4jException.invalid(name + ": null");
        }
        MemorySegment seg = t.memory();
        if (!seg.scope().isAlive()) {
            throw Attn4jException.invalid(name + ": the arena owning this tensor's memory is closed");
        }
        attn4j_tensor.data(desc, seg);
        attn4j_tensor.size_bytes(desc, t.byteSize());
        attn4j_tensor.dtype(desc, t.dtype().code());
        attn4j_tensor.device_type(desc, t.device().kind().code);
        attn4j_tensor.device_id(desc, t.device().index());
        int rank = t.rank();
        attn4j_tensor.rank(desc, rank);
        for (int i = 0; i < Tensor.MAX_RANK; i++) {
            attn4j_tensor.shape(desc, i, i < rank ? t.shape(i) : 0L);
            attn4j_tensor.strides(desc, i, i < rank ? t.stride(i) : 0L);
        }
    }

    /**
     * As {@link #fill(MemorySegment, Tensor, String)}, first checking that {@code t} lives where
     * the work runs (a host tensor handed to a CUDA plan, or the reverse).
     */
    static void fill(MemorySegment desc, Tensor t, String name, Device runsOn) {
        if (t != null && !t.device().equals(runsOn)) {
            throw Attn4jException.invalid(name + ": tensor on " + t.device() + ", but this runs on " + runsOn
                    + (t.isHost() ? "; copy it into a tensor of a DeviceArena (Attn4j.copy)"
                            : "; copy it to a host tensor (Attn4j.copy)"));
        }
        fill(desc, t, name);
    }

    /**
     * Writes a contiguous 1-D I32 view of {@code count} ints at {@code address} on {@code device},
     * {@code bytes} of which are valid.
     */
    static void fillInts(MemorySegment desc, long address, long bytes, long count, Device device) {
        desc.set(ValueLayout.JAVA_LONG, attn4j_tensor.data$offset(), address);
        attn4j_tensor.size_bytes(desc, bytes);
        attn4j_tensor.dtype(desc, DType.I32.code());
        attn4j_tensor.device_type(desc, device.kind().code);
        attn4j_tensor.device_id(desc, device.index());
        attn4j_tensor.rank(desc, 1);
        attn4j_tensor.shape(desc, 0, count);
        attn4j_tensor.strides(desc, 0, 1L);
        for (int i = 1; i < Tensor.MAX_RANK; i++) {
            attn4j_tensor.shape(desc, i, 0L);
            attn4j_tensor.strides(desc, i, 0L);
        }
    }

    /**
     * Writes a [rows, heads, dim] view at {@code address} ({@code bytes} of memory of
     * {@code device} from there) without creating a segment object: a page of a cache as the
     * source of an append. (Device segments carry an address but no size, hence the explicit one.)
     */
    static void fillView(MemorySegment desc, long address, long bytes, DType dtype, long rows, long heads, long dim,
            long rowStride, long headStride, Device device) {
        desc.set(ValueLayout.JAVA_LONG, attn4j_tensor.data$offset(), address);
        attn4j_tensor.size_bytes(desc, bytes);
        attn4j_tensor.dtype(desc, dtype.code());
        attn4j_tensor.device_type(desc, device.kind().code);
        attn4j_tensor.device_id(desc, device.index());
        attn4j_tensor.rank(desc, 3);
        attn4j_tensor.shape(desc, 0, rows);
        attn4j_tensor.shape(desc, 1, heads);
        attn4j_tensor.shape(desc, 2, dim);
        attn4j_tensor.shape(desc, 3, 0L);
        attn4j_tensor.strides(desc, 0, rowStride);
        attn4j_tensor.strides(desc, 1, headStride);
        attn4j_tensor.strides(desc, 2, 1L);
        attn4j_tensor.strides(desc, 3, 0L);
    }

    static void requireDType(Tensor t, DType expected, String name) {
        if (t.dtype() != expected) {
            throw Attn4jException.invalid(name + ": dtype " + t.dtype() + " differs from the expected " + expected);
        }
    }
}
