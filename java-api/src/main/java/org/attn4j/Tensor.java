package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

import org.attn4j.internal.Floats;

/**
 * A strided view of memory: a {@link MemorySegment}, a {@link DType}, a shape and strides (in
 * elements), on a {@link Device}. Host tensors wrap caller segments without copying; the caller's
 * arena owns the memory, and a tensor whose arena was closed is rejected when used. Device
 * tensors ({@link #allocate(DeviceArena, DType, long...)} on a CUDA {@link Attn4j}) live in GPU
 * memory that Java cannot read: their element accessors throw, and data moves only through
 * {@link Attn4j#copy}. Immutable and cheap; safe to share between threads.
 */
public final class Tensor {
    /** Largest rank the native descriptors carry. */
    public static final int MAX_RANK = 4;

    // Host: the memory itself. Device: a zero-length segment at the device address, bound to the
    // owning arena's lifetime, so nothing in Java can dereference it.
    private final MemorySegment segment;
    private final long byteSize;
    private final DType dtype;
    private final long[] shape;
    private final long[] strides;
    private final Device device;

    private Tensor(MemorySegment segment, long byteSize, DType dtype, long[] shape, long[] strides, Device device) {
        this.segment = segment;
        this.byteSize = byteSize;
        this.dtype = dtype;
        this.shape = shape;
        this.strides = strides;
        this.device = device;
    }

    /** Wraps a contiguous (row-major) host segment. */
    public static Tensor of(MemorySegment segment, DType dtype, long... shape) {
        long[] s = checkShape(shape);
        return of(segment, dtype, s, contiguousStrides(s));
    }

    /** Wraps a strided host segment; strides in elements. */
    public static Tensor of(MemorySegment segment, DType dtype, long[] shape, long[] strides) {
        if (segment == null) {
            throw Attn4jException.invalid("segment: null");
        }
        if (dtype == null) {
            throw Attn4jException.invalid("dtype: null");
        }
        requireTensorType(dtype);
        long[] s = checkShape(shape);
        if (strides == null || strides.length != s.length) {
            throw Attn4jException.invalid("strides: expected " + s.length + " strides, got "
                    + (strides == null ? "null" : strides.length));
        }
        long[] st = strides.clone();
        long maxOffset = 0;
        boolean empty = false;
        for (int i = 0; i < s.length; i++) {
            if (st[i] < 0) {
                throw Attn4jException.invalid("strides[" + i + "]: negative stride " + st[i]);
            }
            if (s[i] == 0) {
                empty = true;
            }
            maxOffset = Math.addExact(maxOffset, Math.multiplyExact(Math.max(s[i] - 1, 0), st[i]));
        }
        long needed = empty ? 0 : Math.multiplyExact(maxOffset + 1, dtype.byteSize());
        if (segment.byteSize() < needed) {
            throw Attn4jException.invalid("segment: " + segment.byteSize() + " bytes are too small for "
                    + dtype + " shape " + Arrays.toString(s) + " strides " + Arrays.toString(st)
                    + " (needs " + needed + ")");
        }
        if (!segment.isNative()) {
            throw Attn4jException.invalid("segment: heap segments are not supported; use an off-heap "
                    + "segment (Arena.allocate) so native kernels can read it");
        }
        if (segment.address() % dtype.byteSize() != 0) {
            throw Attn4jException.invalid("segment: address 0x" + Long.toHexString(segment.address())
                    + " is not aligned to " + dtype.byteSize() + " bytes for " + dtype);
        }
        return new Tensor(segment, segment.byteSize(), dtype, s, st, Device.cpu());
    }

    /**
     * Allocates a contiguous tensor in {@code arena}'s memory: device memory on a CUDA
     * {@link Attn4j} (not readable from Java; copy it with {@link Attn4j#copy}), host memory on a
     * CPU one (then an ordinary host tensor). Contents are undefined; freed when the arena closes.
     */
    public static Tensor allocate(DeviceArena arena, DType dtype, long... shape) {
        if (arena == null) {
            throw Attn4jException.invalid("arena: null");
        }
        return arena.allocateTensor(dtype, shape, false);
    }

    /** A contiguous tensor over {@code bytes} of device memory at {@code address} (zero-length segment). */
    static Tensor onDevice(MemorySegment address, long bytes, DType dtype, long[] shape, Device device) {
        return new Tensor(address, bytes, dtype, shape, contiguousStrides(shape), device);
    }

    static long[] checkedShape(DType dtype, long[] shape) {
        requireTensorType(dtype);
        return checkShape(shape);
    }

    /** Allocates a contiguous, 64-byte-aligned host tensor in {@code arena}; contents are zero. */
    public static Tensor allocate(Arena arena, DType dtype, long... shape) {
        requireTensorType(dtype);
        long[] s = checkShape(shape);
        long bytes = Math.multiplyExact(elementCount(s), dtype.byteSize());
        return of(arena.allocate(Math.max(bytes, 1), 64), dtype, s);
    }

    /** Allocates a host tensor holding {@code values} converted to {@code dtype} (row-major). */
    public static Tensor ofFloats(Arena arena, DType dtype, float[] values, long... shape) {
        Tensor t = allocate(arena, dtype, shape);
        if (values.length != t.elementCount()) {
            throw Attn4jException.invalid("values: " + values.length + " values for shape "
                    + Arrays.toString(shape) + " (" + t.elementCount() + " elements)");
        }
        for (int i = 0; i < values.length; i++) {
            t.setFlat(i, values[i]);
        }
        return t;
    }

    /** Allocates a 1-D {@link DType#I32} host tensor (indptr arrays and the like). */
    public static Tensor ofInts(Arena arena, int... values) {
        Tensor t = allocate(arena, DType.I32, values.length);
        MemorySegment.copy(values, 0, t.segment, ValueLayout.JAVA_INT, 0, values.length);
        return t;
    }

    /** The host memory of this tensor; a device tensor has none Java may touch (throws). */
    public MemorySegment segment() {
        requireHost("segment()");
        return segment;
    }

    /** Address of the first element: a device pointer for device tensors (interop with other CUDA code). */
    public long address() {
        return segment.address();
    }

    /** Bytes of memory behind {@link #address()} that the tensor may reach. */
    public long byteSize() {
        return byteSize;
    }

    /** Whether Java can read and write the elements (host memory, pinned or not). */
    public boolean isHost() {
        return device.kind() == Device.Kind.CPU;
    }

    /** The segment as handed to native code (for device tensors, the zero-length address segment). */
    MemorySegment memory() {
        return segment;
    }

    public DType dtype() {
        return dtype;
    }

    public Device device() {
        return device;
    }

    public int rank() {
        return shape.length;
    }

    /** A copy of the shape. */
    public long[] shape() {
        return shape.clone();
    }

    public long shape(int dim) {
        return shape[dim];
    }

    /** A copy of the strides, in elements. */
    public long[] strides() {
        return strides.clone();
    }

    public long stride(int dim) {
        return strides[dim];
    }

    public long elementCount() {
        return elementCount(shape);
    }

    public boolean isContiguous() {
        long expected = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            if (strides[i] != expected) {
                return false;
            }
            expected *= Math.max(shape[i], 1);
        }
        return true;
    }

    boolean sameShape(Tensor other) {
        return Arrays.equals(shape, other.shape);
    }

    /** All elements in row-major order, converted to float. */
    public float[] toFloatArray() {
        requireHost("toFloatArray");
        long n = elementCount();
        if (n > Integer.MAX_VALUE - 8) {
            throw Attn4jException.invalid("tensor: " + n + " elements do not fit a Java array");
        }
        float[] out = new float[(int) n];
        for (int i = 0; i < out.length; i++) {
            out[i] = getFlat(i);
        }
        return out;
    }

    /** Element at row-major index {@code flat}, converted to float. */
    public float getFlat(long flat) {
        requireHost("getFlat");
        long off = offsetOf(flat) * dtype.byteSize();
        return switch (dtype) {
            case F32 -> segment.get(ValueLayout.JAVA_FLOAT_UNALIGNED, off);
            case F16 -> Floats.fromF16(segment.get(ValueLayout.JAVA_SHORT_UNALIGNED, off));
            case BF16 -> Floats.fromBf16(segment.get(ValueLayout.JAVA_SHORT_UNALIGNED, off));
            case I32 -> segment.get(ValueLayout.JAVA_INT_UNALIGNED, off);
            case INT8, INT4, INT2 -> throw new IllegalStateException("unreachable: tensors never hold " + dtype);
        };
    }

    /** Sets the element at row-major index {@code flat}, converting from float. */
    public void setFlat(long flat, float value) {
        requireHost("setFlat");
        long off = offsetOf(flat) * dtype.byteSize();
        switch (dtype) {
            case F32 -> segment.set(ValueLayout.JAVA_FLOAT_UNALIGNED, off, value);
            case F16 -> segment.set(ValueLayout.JAVA_SHORT_UNALIGNED, off, Floats.toF16(value));
            case BF16 -> segment.set(ValueLayout.JAVA_SHORT_UNALIGNED, off, Floats.toBf16(value));
            case I32 -> segment.set(ValueLayout.JAVA_INT_UNALIGNED, off, (int) value);
            case INT8, INT4, INT2 -> throw new IllegalStateException("unreachable: tensors never hold " + dtype);
        }
    }

    /** Fills every element with {@code value} (e.g. NaN to poison outputs in tests). */
    public void fill(float value) {
        requireHost("fill");
        long n = elementCount();
        for (long i = 0; i < n; i++) {
            setFlat(i, value);
        }
    }

    private void requireHost(String what) {
        if (device.kind() != Device.Kind.CPU) {
            throw new IllegalStateException("tensor: " + what + " reads host memory, but this tensor lives on " + device
                    + "; copy it to a host tensor first (Attn4j.copy)");
        }
    }

    private long offsetOf(long flat) {
        long off = 0;
        for (int d = shape.length - 1; d >= 0; d--) {
            long idx = flat % shape[d];
            flat /= shape[d];
            off += idx * strides[d];
        }
        return off;
    }

    @Override
    public String toString() {
        return "Tensor[" + dtype + " " + Arrays.toString(shape) + " strides " + Arrays.toString(strides)
                + " on " + device + "]";
    }

    static long elementCount(long[] shape) {
        long n = 1;
        for (long d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    static long[] contiguousStrides(long[] shape) {
        long[] st = new long[shape.length];
        long s = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            st[i] = s;
            s *= Math.max(shape[i], 1);
        }
        return st;
    }

    private static long[] checkShape(long[] shape) {
        if (shape == null || shape.length == 0 || shape.length > MAX_RANK) {
            throw Attn4jException.invalid("shape: rank must be 1.." + MAX_RANK + ", got "
                    + (shape == null ? "null" : shape.length));
        }
        for (int i = 0; i < shape.length; i++) {
            if (shape[i] < 0) {
                throw Attn4jException.invalid("shape[" + i + "]: negative dimension " + shape[i]);
            }
        }
        return shape.clone();
    }

    private static void requireTensorType(DType dtype) {
        if (dtype == null) {
            throw Attn4jException.invalid("dtype: null");
        }
        if (dtype.isQuantized()) {
            throw Attn4jException.invalid("dtype: " + dtype + " is a KV cache format; tensors hold F32, F16, "
                    + "BF16 or I32");
        }
    }
}
