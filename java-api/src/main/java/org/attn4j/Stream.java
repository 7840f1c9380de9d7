package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.internal.Native;

/**
 * A queue of device work (a CUDA stream). An {@link Attn4j} enqueues its copies, appends and
 * decode runs on its current stream ({@link Attn4j#useStream}); on a stream other than the
 * default one, decode runs do not synchronize, so a step can be {@linkplain #beginCapture captured}
 * into a {@link CudaGraph}. On a CPU {@code Attn4j} streams exist so code is device-agnostic: work
 * runs inside each call and {@link #synchronize()} returns at once. Closing synchronizes first; a
 * {@linkplain #wrap borrowed} stream is only released. Not thread-safe.
 */
public final class Stream implements AutoCloseable {
    private final Attn4j lib;
    private final boolean borrowed;
    private MemorySegment handle;
    private boolean capturing;

    private Stream(Attn4j lib, MemorySegment handle, boolean borrowed) {
        this.lib = lib;
        this.handle = handle;
        this.borrowed = borrowed;
    }

    static Stream create(Attn4j lib) {
        try (Arena call = Arena.ofConfined()) {
            MemorySegment out = call.allocate(ValueLayout.ADDRESS);
            Native.check(Attn4jNative.attn4j_stream_create(lib.handle(), out), "newStream on " + lib.device());
            return new Stream(lib, out.get(ValueLayout.ADDRESS, 0), false);
        }
    }

    /**
     * Borrows a {@code cudaStream_t} made elsewhere (e.g. PyTorch's current stream), given as its
     * address; attn4j never destroys it. {@link #close()} releases only the wrapper.
     */
    public static Stream wrap(Attn4j lib, long cudaStreamHandle) {
        if (lib == null) {
            throw Attn4jException.invalid("lib: null");
        }
        try (Arena call = Arena.ofConfined()) {
            MemorySegment out = call.allocate(ValueLayout.ADDRESS);
            Native.check(Attn4jNative.attn4j_stream_wrap(lib.handle(), MemorySegment.ofAddress(cudaStreamHandle), out),
                    "Stream.wrap(0x" + Long.toHexString(cudaStreamHandle) + ") on " + lib.device());
            return new Stream(lib, out.get(ValueLayout.ADDRESS, 0), true);
        }
    }

    /** The {@code cudaStream_t} behind this stream as an address; 0 on a CPU {@code Attn4j}. */
    public long nativeHandle() {
        try (Arena call = Arena.ofConfined()) {
            MemorySegment out = call.allocate(ValueLayout.ADDRESS);
            Native.check(Attn4jNative.attn4j_stream_native_handle(handle(), out), "nativeHandle");
            return out.get(ValueLayout.ADDRESS, 0).address();
        }
    }

    /**
     * Waits until the work enqueued so far is done. Also reports (as an {@link Attn4jException}
     * naming the table) a page table that the device found invalid in a run since the last
     * synchronize.
     */
    public void synchronize() {
        try {
            Native.check(Attn4jNative.attn4j_stream_synchronize(handle()), "synchronize");
        } finally {
            lib.synchronized_(this);  // the wait happened even when a table error is reported
        }
    }

    /**
     * Starts recording this stream's work into a graph instead of running it: until
     * {@link #endCapture()}, the calls of its {@code Attn4j} are recorded, and calls that cannot
     * be recorded (allocation, synchronous copies) fail and abort the capture. Make this stream
     * current ({@link Attn4j#useStream}) before recording. Unsupported on CPU.
     */
    public void beginCapture() {
        Native.check(Attn4jNative.attn4j_graph_capture_begin(handle()), "beginCapture");
        capturing = true;
    }

    boolean isCapturing() {
        return capturing;
    }

    /** Ends the capture begun by {@link #beginCapture()} and returns the recorded graph. */
    public CudaGraph endCapture() {
        try (Arena call = Arena.ofConfined()) {
            MemorySegment out = call.allocate(ValueLayout.ADDRESS);
            capturing = false;  // a failed end aborts the capture too
            Native.check(Attn4jNative.attn4j_graph_capture_end(handle(), out), "endCapture");
            return new CudaGraph(out.get(ValueLayout.ADDRESS, 0));
        }
    }

    /** Whether this wraps a stream made outside attn4j ({@link #wrap}). */
    public boolean isBorrowed() {
        return borrowed;
    }

    public boolean isOpen() {
        return handle != null;
    }

    Attn4j lib() {
        return lib;
    }

    MemorySegment handle() {
        if (handle == null) {
            throw new IllegalStateException("stream: closed");
        }
        return handle;
    }

    /** Synchronizes and destroys the stream; if it is its Attn4j's current stream, that reverts to the default. */
    @Override
    public void close() {
        if (handle == null) {
            return;
        }
        lib.forget(this);
        MemorySegment h = handle;
        handle = null;
        Native.check(Attn4jNative.attn4j_stream_destroy(h), "close stream");
    }

    @Override
    public String toString() {
        return "Stream[" + lib.device() + (borrowed ? ", borrowed" : "") + (handle == null ? ", closed" : "") + "]";
    }
}
