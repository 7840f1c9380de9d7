package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.internal.Native;

/**
 * Owns memory of one {@link Attn4j}'s device: device tensors ({@link Tensor#allocate(DeviceArena,
 * DType, long...)}) and page-locked host tensors for asynchronous copies ({@link #allocatePinned}).
 * On a CPU {@code Attn4j} both are ordinary host memory, so the same code runs everywhere.
 * {@link #close()} frees everything at once and invalidates its tensors; allocating from a closed
 * arena throws {@link IllegalStateException}. Allocation is not stream-ordered and not cheap:
 * allocate before a decode loop or a graph capture, never inside. Not thread-safe to allocate
 * from; its tensors may be used from any thread. Closing the {@code Attn4j} closes its arenas.
 */
public final class DeviceArena implements AutoCloseable {
    private final Attn4j lib;
    // Lifetime of every segment and tensor handed out; closed first, so use after close is caught.
    private final Arena scope = Arena.ofShared();
    private final List<MemorySegment> deviceBlocks = new ArrayList<>();
    private final List<MemorySegment> pinnedBlocks = new ArrayList<>();

    DeviceArena(Attn4j lib) {
        this.lib = lib;
    }

    /** The device whose memory {@link Tensor#allocate(DeviceArena, DType, long...)} returns. */
    public Device device() {
        return lib.device();
    }

    public boolean isOpen() {
        return scope.scope().isAlive();
    }

    /**
     * A contiguous host tensor in page-locked memory: the source or destination of an
     * {@link Attn4j#copyAsync} that really overlaps with device work. Readable from Java.
     */
    public Tensor allocatePinned(DType dtype, long... shape) {
        return allocateTensor(dtype, shape, true);
    }

    Tensor allocateTensor(DType dtype, long[] shape, boolean pinned) {
        long[] s = Tensor.checkedShape(dtype, shape);
        long bytes = Math.multiplyExact(Tensor.elementCount(s), dtype.byteSize());
        if (pinned || device().kind() == Device.Kind.CPU) {
            return Tensor.of(pinned ? allocatePinnedBytes(bytes) : allocateBytes(bytes), dtype, s);
        }
        return Tensor.onDevice(allocateBytes(bytes), bytes, dtype, s, device());
    }

    /**
     * {@code bytes} of device memory (at least 1 byte is allocated): on CUDA a zero-length segment
     * at the device address, on CPU a readable host segment; both die with this arena.
     */
    MemorySegment allocateBytes(long bytes) {
        MemorySegment p = allocate(bytes, false);
        return device().kind() == Device.Kind.CPU ? p.reinterpret(bytes, scope, null) : p.reinterpret(scope, null);
    }

    /** {@code bytes} of page-locked host memory, readable from Java, dying with this arena. */
    MemorySegment allocatePinnedBytes(long bytes) {
        return allocate(bytes, true).reinterpret(bytes, scope, null);
    }

    Attn4j lib() {
        return lib;
    }

    private MemorySegment allocate(long bytes, boolean pinned) {
        if (!isOpen()) {
            throw new IllegalStateException("arena: this DeviceArena is closed");
        }
        if (bytes < 0) {
            throw Attn4jException.invalid("bytes: negative size " + bytes);
        }
        try (Arena call = Arena.ofConfined()) {
            MemorySegment out = call.allocate(ValueLayout.ADDRESS);
            MemorySegment ctx = lib.handle();
            long size = Math.max(bytes, 1);
            if (pinned) {
                Native.check(Attn4jNative.attn4j_host_alloc_pinned(ctx, size, out), "allocatePinned " + size + " bytes");
            } else {
                Native.check(Attn4jNative.attn4j_memory_alloc(ctx, size, out),
                        "allocate " + size + " bytes on " + lib.device());
            }
            MemorySegment p = out.get(ValueLayout.ADDRESS, 0);
            (pinned ? pinnedBlocks : deviceBlocks).add(p);
            return p;
        }
    }

    /** Frees all memory of this arena; its tensors become unusable. Idempotent. */
    @Override
    public void close() {
        if (!isOpen()) {
            return;
        }
        scope.close();
        lib.forget(this);
        MemorySegment ctx = lib.handle();
        for (MemorySegment p : deviceBlocks) {
            Attn4jNative.attn4j_memory_free(ctx, p);
        }
        for (MemorySegment p : pinnedBlocks) {
            Attn4jNative.attn4j_host_free_pinned(ctx, p);
        }
        deviceBlocks.clear();
        pinnedBlocks.clear();
    }

    @Override
    public String toString() {
        return "DeviceArena[" + device() + ", " + deviceBlocks.size() + " device and " + pinnedBlocks.size()
                + " pinned blocks" + (isOpen() ? "" : ", closed") + "]";
    }
}
