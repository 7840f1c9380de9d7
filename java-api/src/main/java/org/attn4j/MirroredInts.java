package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * An int32 array that Java fills and kernels read: plain host memory for CPU work, or pinned host
 * staging mirrored in device memory for CUDA work, where {@link #upload} enqueues the copy on the
 * current stream. Uploading and describing allocate nothing (hot path of every decode step).
 */
final class MirroredInts {
    /** What Java writes (page-locked on CUDA). */
    final MemorySegment host;
    private final MemorySegment device; // same as host when the kernels read host memory
    private final Attn4j lib;           // null when nothing needs uploading
    private final Device where;

    private MirroredInts(MemorySegment host, MemorySegment device, Attn4j lib, Device where) {
        this.host = host;
        this.device = device;
        this.lib = lib;
        this.where = where;
    }

    static MirroredInts onHost(Arena arena, long count) {
        MemorySegment h = arena.allocate(ValueLayout.JAVA_INT, Math.max(count, 1));
        return new MirroredInts(h, h, null, Device.cpu());
    }

    /** In {@code arena}'s device memory (host memory, not mirrored, on a CPU Attn4j). */
    static MirroredInts on(DeviceArena arena, long count) {
        long bytes = Math.max(count, 1) * Integer.BYTES;
        if (arena.device().kind() == Device.Kind.CPU) {
            MemorySegment h = arena.allocateBytes(bytes);
            return new MirroredInts(h, h, null, Device.cpu());
        }
        return new MirroredInts(arena.allocatePinnedBytes(bytes), arena.allocateBytes(bytes), arena.lib(),
                arena.device());
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
        }
    }

    /** Points the attn4j_tensor {@code desc} at ints {@code [offset, offset + count)} as the kernels see them. */
    void describe(MemorySegment desc, long offset, long count) {
        long byteOffset = offset * Integer.BYTES;
        NativeTensor.fillInts(desc, device.address() + byteOffset, host.byteSize() - byteOffset, count, where);
    }
}
