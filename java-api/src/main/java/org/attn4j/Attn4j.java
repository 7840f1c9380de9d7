package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_context_options;
import org.attn4j.internal.Native;
import org.attn4j.internal.NativeLibrary;

/**
 * The loaded library bound to one {@link Device} and thread count: the entry point for caches
 * and plans. Not thread-safe; use one instance per thread that submits work, or synchronize.
 * Plans and caches made from it keep working after it is closed only as far as they need no
 * new native context calls; close it last.
 */
public final class Attn4j implements AutoCloseable {
    private final Device device;
    private final int threads;
    private MemorySegment context;

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
            Attn4jNative.attn4j_context_destroy(context);
            context = null;
        }
    }

    @Override
    public String toString() {
        return "Attn4j[" + device + ", threads=" + threads + (context == null ? ", closed" : "") + "]";
    }
}
