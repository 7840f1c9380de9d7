package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * An int32 array that Java fills and kernels read: plain host memory for CPU work, or pinned host
 * staging mirrored in device memory for CUDA work, where {@link #upload} enqueues the copy on the
 * current stream. Uploading and describing allocate nothing (hot path of every decode step).
 * Writers call {@link #beforeHostWrite()} first: an enqueued upload reads the staging memory when
 * the stream gets to it, so refilling before then would hand the earlier run the new contents.
 */
final class MirroredInts {
    /** What Java writes (page-locked on CUDA). */
    final MemorySegment host;
    private final MemorySegment device; // same as host when the kernels read host memory
    private final Attn4j lib;           // null when nothing needs uploading
    private final Device where;
    private final MemorySegment fence;  // 4 pinned bytes a waiting copy writes into
    // Whether an upload may still be reading `host`: the lib's synchronization count when it was
    // enqueued, or -1 when none is outstanding.
    private long pendingSince = -1;

    private MirroredInts(MemorySegment host, MemorySegment device, Attn4j lib, Device where, MemorySegment fence) {
        this.host = host;
        this.device = device;
        this.lib = lib;
        this.where = where;
        this.fence = fence;
    }

    static MirroredInts onHost(Arena arena, long count) {
        MemorySegment h = arena.allocate(ValueLayout.JAVA_INT, Math.max(count, 1));
        return new MirroredInts(h, h, null, Device.cpu(), null);
    }

    /** In {@code arena}'s device memory (host memory, not mirrored, on a CPU Attn4j). */
    static MirroredInts on(DeviceArena arena, long count) {
        long bytes = Math.max(count, 1) * Integer.BYTES;
        if (arena.device().kind() == Device.Kind.CPU) {
            MemorySegment h = arena.allocateBytes(bytes);
            return new MirroredInts(h, h, null, Device.cpu(), null);
        }
        return new MirroredInts(arena.allocatePinnedBytes(bytes), arena.allocateBytes(bytes), arena.lib(),
                arena.device(), arena.allocatePinnedBytes(Integer.BYTES));
    }

    /** Where the kernels read it. */
    Device device() {
        return where;
    }

    boolean isAlive() {
        return host.scope().isAlive();
    }

    /** Enqueues the copy of the first {@code count} ints to the device; nothing to do on the host. */
    void upload(long count) {
        if (lib != null && count > 0) {
            lib.memcpy(device, host, count * Integer.BYTES, true, "page table upload");
            // A captured copy runs at each replay, reading what the caller put there before it.
            pendingSince = lib.isCapturing() ? -1 : lib.synchronizations();
        }
    }

    /**
     * Waits, if needed, until the last upload has read the staging memory. Free when the stream was
     * synchronized through the lib since (the usual step: read the output, then refill); otherwise
     * one small synchronous copy on the current stream, which returns once the stream's earlier
     * work, the upload included, has run. No allocation.
     */
    void beforeHostWrite() {
        if (pendingSince >= 0 && pendingSince == lib.synchronizations() && !lib.isCapturing()) {
            lib.memcpy(fence, device, Integer.BYTES, false, "page table refill (waiting for the previous upload)");
        }
        pendingSince = -1;
    }

    /** Points the attn4j_tensor {@code desc} at ints {@code [offset, offset + count)} as the kernels see them. */
    void describe(MemorySegment desc, long offset, long count) {
        long byteOffset = offset * Integer.BYTES;
        NativeTensor.fillInts(desc, device.address() + byteOffset, host.byteSize() - byteOffset, count, where);
    }
}
