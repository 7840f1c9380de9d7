package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_context_options;
import org.attn4j.internal.Native;
import org.attn4j.internal.NativeLibrary;

/**
 * The loaded library bound to one {@link Device} and thread count: the entry point for caches
 * and plans. Not thread-safe; use one instance per thread that submits work, or synchronize.
 * Plans and caches made from it keep working after it is closed only as far as they need no
 * new native context calls; close it last. Closing it closes its {@link DeviceArena}s (their
 * memory belongs to the context).
 *
 * <p>Device memory: {@link #newDeviceArena()} owns device and pinned memory,
 * {@link #copy}/{@link #copyAsync} move data between host and device, {@link #newStream()} and
 * {@link #useStream} choose the queue work goes to, and {@link Stream#beginCapture()} records a
 * step into a {@link CudaGraph}.
 */
public final class Attn4j implements AutoCloseable {
    private final Device device;
    private final int threads;
    private MemorySegment context;
    private final List<DeviceArena> arenas = new ArrayList<>();
    private Stream currentStream;
    private long synchronizations;

    private Attn4j(Device device, int threads, MemorySegment context) {
        this.device = device;
        this.threads = threads;
        this.context = context;
    }

    /** CPU with one thread per available core. */
    public static Attn4j open() {
        return open(Device.cpu(), 0);
    }

    public static Attn4j open(Device device) {
        return open(device, 0);
    }

    /**
     * @param threads CPU worker threads; 0 = one per available core
     */
    public static Attn4j open(Device device, int threads) {
        if (device == null) {
            throw Attn4jException.invalid("device: null");
        }
        if (threads < 0) {
            throw Attn4jException.invalid("threads: must be >= 0 (0 = all cores), got " + threads);
        }
        NativeLibrary.ensureLoaded();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment opts = attn4j_context_options.allocate(arena);
            attn4j_context_options.struct_size(opts, (int) attn4j_context_options.sizeof());
            attn4j_context_options.device_type(opts, device.kind().code);
            attn4j_context_options.device_id(opts, device.index());
            attn4j_context_options.num_threads(opts, threads);
            MemorySegment out = arena.allocate(ValueLayout.ADDRESS);
            Native.check(Attn4jNative.attn4j_context_create(opts, out), "open " + device);
            int resolved = threads == 0 ? Runtime.getRuntime().availableProcessors() : threads;
            return new Attn4j(device, resolved, out.get(ValueLayout.ADDRESS, 0));
        }
    }

    public Device device() {
        return device;
    }

    /** CPU worker threads requested (0 resolved to the available processors). */
    public int threads() {
        return threads;
    }

    /** ABI version of the loaded native library. */
    public static int abiVersion() {
        NativeLibrary.ensureLoaded();
        return Attn4jNative.attn4j_abi_version();
    }

    /** Build description of the native library, one "key=value" per line. */
    public static String buildInfo() {
        NativeLibrary.ensureLoaded();
        return Native.cString(Attn4jNative.attn4j_build_info());
    }

    /** CPU features detected at run time and the kernel ISA chosen. */
    public static String cpuInfo() {
        NativeLibrary.ensureLoaded();
        return Native.cString(Attn4jNative.attn4j_cpu_info());
    }

    /** Visible CUDA devices (0 without a GPU, a driver, or a CUDA build). */
    public static int cudaDeviceCount() {
        NativeLibrary.ensureLoaded();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ValueLayout.JAVA_INT);
            Native.check(Attn4jNative.attn4j_device_count(Device.Kind.CUDA.code, out), "cudaDeviceCount");
            return out.get(ValueLayout.JAVA_INT, 0);
        }
    }

    /** STREAM-like read bandwidth of this context's threads in GB/s (the decode roofline). */
    public double measureReadBandwidth(long bytes, int repeats) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ValueLayout.JAVA_DOUBLE);
            Native.check(Attn4jNative.attn4j_measure_read_bandwidth(handle(), bytes, repeats, out),
                    "measureReadBandwidth");
            return out.get(ValueLayout.JAVA_DOUBLE, 0);
        }
    }

    // ---- memory, copies, streams ----

    /** A new arena for this device's memory (device tensors, pinned host tensors). */
    public DeviceArena newDeviceArena() {
        handle();
        DeviceArena a = new DeviceArena(this);
        arenas.add(a);
        return a;
    }

    /**
     * Copies {@code src} into {@code dst} and returns when the copy is done: host to device,
     * device to host, device to device or host to host. Both tensors must be contiguous, of the
     * same dtype and shape, and in host memory or memory of this {@code Attn4j}'s device.
     */
    public void copy(Tensor src, Tensor dst) {
        long bytes = checkCopy(src, dst);
        if (bytes > 0) {
            memcpy(dst.memory(), src.memory(), bytes, false, "copy");
        }
    }

    /**
     * As {@link #copy}, but only enqueued on the current stream: {@code src} must stay unchanged
     * and {@code dst} unread until the stream is synchronized. Asynchronous only with pinned
     * ({@link DeviceArena#allocatePinned}) or device memory on both sides; synchronous on CPU.
     * Allocates nothing, so it may be captured in a {@link CudaGraph}.
     */
    public void copyAsync(Tensor src, Tensor dst) {
        long bytes = checkCopy(src, dst);
        if (bytes > 0) {
            memcpy(dst.memory(), src.memory(), bytes, true, "copyAsync");
        }
    }

    /** A new stream of this device (see {@link Stream}); close it when done. */
    public Stream newStream() {
        return Stream.create(this);
    }

    /** Later work of this {@code Attn4j} (copies, appends, runs) is enqueued on {@code stream}. */
    public void useStream(Stream stream) {
        if (stream == null) {
            throw Attn4jException.invalid("stream: null (use useDefaultStream())");
        }
        if (stream.lib() != this) {
            throw Attn4jException.invalid("stream: made by another Attn4j (" + stream.lib() + ")");
        }
        Native.check(Attn4jNative.attn4j_context_set_stream(handle(), stream.handle()), "useStream");
        currentStream = stream;
    }

    /** Later work is enqueued on the device's default stream again (the initial state). */
    public void useDefaultStream() {
        Native.check(Attn4jNative.attn4j_context_set_stream(handle(), MemorySegment.NULL), "useDefaultStream");
        currentStream = null;
    }

    /** The stream set by {@link #useStream}, or null for the default stream. */
    public Stream currentStream() {
        return currentStream;
    }

    /** Copies {@code bytes} between two addresses of host or this device's memory on the current stream. */
    void memcpy(MemorySegment dst, MemorySegment src, long bytes, boolean async, String what) {
        Native.check(Attn4jNative.attn4j_memcpy(handle(), dst, src, bytes, async ? 1 : 0), what);
        if (!async) {
            synchronizations++;
        }
    }

    /** How many times work of the current stream was waited for through this lib (staging reuse). */
    long synchronizations() {
        return synchronizations;
    }

    /** Counts a wait for the current stream's work (Stream.synchronize). */
    void synchronized_(Stream stream) {
        if (stream == currentStream) {
            synchronizations++;
        }
    }

    /** Whether the current stream is recording a graph (then copies run at replay, not now). */
    boolean isCapturing() {
        return currentStream != null && currentStream.isCapturing();
    }

    /** Called by a closing arena. */
    void forget(DeviceArena arena) {
        arenas.remove(arena);
    }

    /** Called by a closing stream: the context must not keep a destroyed stream as its current one. */
    void forget(Stream stream) {
        if (currentStream == stream) {
            currentStream = null;
            if (context != null) {
                Native.check(Attn4jNative.attn4j_context_set_stream(context, MemorySegment.NULL), "close stream");
            }
        }
    }

    /** Checks a copy's arguments (allocating nothing unless they are wrong); returns its bytes. */
    private long checkCopy(Tensor src, Tensor dst) {
        if (src == null || dst == null) {
            throw Attn4jException.invalid((src == null ? "src" : "dst") + ": null");
        }
        if (src.dtype() != dst.dtype()) {
            throw Attn4jException.invalid("dst: dtype " + dst.dtype() + " differs from src's " + src.dtype());
        }
        if (!src.sameShape(dst)) {
            throw Attn4jException.invalid("dst: shape " + Arrays.toString(dst.shape()) + " differs from src's "
                    + Arrays.toString(src.shape()));
        }
        checkCopyable(src, "src");
        checkCopyable(dst, "dst");
        return src.elementCount() * src.dtype().byteSize();
    }

    private void checkCopyable(Tensor t, String name) {
        if (!t.isContiguous()) {
            throw Attn4jException.invalid(name + ": copies need contiguous tensors, got strides "
                    + Arrays.toString(t.strides()));
        }
        if (!t.isHost() && !t.device().equals(device)) {
            throw Attn4jException.invalid(name + ": memory of " + t.device() + ", but this Attn4j runs on " + device);
        }
        if (!t.memory().scope().isAlive()) {
            throw Attn4jException.invalid(name + ": the arena owning this tensor's memory is closed");
        }
    }

    MemorySegment handle() {
        if (context == null) {
            throw new IllegalStateException("attn4j: this Attn4j instance is closed");
        }
        return context;
    }

    boolean isOpen() {
        return context != null;
    }

    @Override
    public void close() {
        if (context != null) {
            for (DeviceArena a : List.copyOf(arenas)) {
                a.close();
            }
            currentStream = null;
            Attn4jNative.attn4j_context_destroy(context);
            context = null;
        }
    }

    @Override
    public String toString() {
        return "Attn4j[" + device + ", threads=" + threads + (context == null ? ", closed" : "") + "]";
    }
}
