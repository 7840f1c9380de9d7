package org.attn4j.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;
import java.util.Locale;
import java.util.regex.Pattern;

import org.attn4j.Attn4jException;
import org.attn4j.DType;
import org.attn4j.Status;
import org.attn4j.Tensor;
import org.junit.jupiter.api.function.Executable;

/** Poisoned outputs with guard bytes, error norms, and exception assertions. */
public final class Checks {
    private Checks() {}

    /** Tolerance on ||out - ref|| / ||ref|| (DESIGN section 6). */
    public static double tolerance(DType... types) {
        for (DType t : types) {
            if (t != DType.F32) {
                return 1e-2;
            }
        }
        return 1e-5;
    }

    /** Base seed of the run: -Dattn4j.test.seed, else fixed so runs are reproducible. */
    public static long baseSeed() {
        return Long.getLong("attn4j.test.seed", 0x5EEDL);
    }

    private static final int GUARD = 256;
    private static final byte GUARD_BYTE = (byte) 0xA5;

    /**
     * An output tensor poisoned with NaN, followed by guard bytes that a kernel must never touch
     * (the tensor's segment ends before them, so writing them is an out-of-bounds write).
     */
    public static final class Output {
        public final Tensor tensor;
        private final MemorySegment guard;

        private Output(Tensor tensor, MemorySegment guard) {
            this.tensor = tensor;
            this.guard = guard;
        }

        /** Contiguous; {@code shape} as for {@link Tensor#of}. */
        public static Output of(Arena arena, DType dtype, long... shape) {
            long n = 1;
            for (long d : shape) {
                n *= d;
            }
            long bytes = n * dtype.byteSize();
            MemorySegment all = arena.allocate(bytes + GUARD, 64);
            Tensor t = Tensor.of(all.asSlice(0, bytes), dtype, shape);
            Output o = new Output(t, all.asSlice(bytes, GUARD));
            o.poison();
            return o;
        }

        /** Strided: element (i0, i1, ...) lives at sum(i * stride) elements from the start. */
        public static Output strided(Arena arena, DType dtype, long[] shape, long[] strides) {
            long max = 0;
            for (int i = 0; i < shape.length; i++) {
                max += (shape[i] - 1) * strides[i];
            }
            long bytes = (max + 1) * dtype.byteSize();
            MemorySegment all = arena.allocate(bytes + GUARD, 64);
            all.fill(GUARD_BYTE);
            Tensor t = Tensor.of(all.asSlice(0, bytes), dtype, shape, strides);
            Output o = new Output(t, all.asSlice(bytes, GUARD));
            o.poison();
            return o;
        }

        /** NaN in every element, guard bytes reset. */
        public void poison() {
            tensor.fill(Float.NaN);
            guard.fill(GUARD_BYTE);
        }

        /** Every element written (no NaN left; inputs are finite) and the guard untouched. */
        public float[] read(String what, long seed) {
            for (long i = 0; i < guard.byteSize(); i++) {
                if (guard.get(ValueLayout.JAVA_BYTE, i) != GUARD_BYTE) {
                    fail(what + ": byte " + i + " past the end of the tensor was overwritten (seed " + seed + ")");
                }
            }
            float[] x = tensor.toFloatArray();
            int bad = 0;
            int first = -1;
            for (int i = 0; i < x.length; i++) {
                if (!Float.isFinite(x[i])) {
                    bad++;
                    if (first < 0) {
                        first = i;
                    }
                }
            }
            if (bad > 0) {
                fail(what + ": " + bad + " of " + x.length + " elements not written or not finite, first at flat "
                        + first + " = " + x[first] + " (seed " + seed + ")");
            }
            return x;
        }
    }

    /** ||a - ref|| / ||ref||. */
    public static double relErr(float[] a, double[] ref) {
        assertEquals(ref.length, a.length, "length");
        double num = 0;
        double den = 0;
        for (int i = 0; i < a.length; i++) {
            double d = a[i] - ref[i];
            num += d * d;
            den += ref[i] * ref[i];
        }
        return Math.sqrt(num) / Math.sqrt(Math.max(den, Double.MIN_NORMAL));
    }

    public static double maxAbsErr(float[] a, double[] ref) {
        double m = 0;
        for (int i = 0; i < a.length; i++) {
            m = Math.max(m, Math.abs(a[i] - ref[i]));
        }
        return m;
    }

    public static void assertClose(float[] got, double[] ref, double tol, String what) {
        double err = relErr(got, ref);
        assertTrue(err <= tol, () -> String.format(Locale.ROOT,
                "%s: relative error %.3e > %.1e (max abs error %.3e)", what, err, tol, maxAbsErr(got, ref)));
    }

    /** Flat float array into a new tensor of {@code dtype}. */
    public static Tensor tensor(Arena arena, DType dtype, float[] values, long... shape) {
        return Tensor.ofFloats(arena, dtype, values, shape);
    }

    // ---- exceptions ----

    /**
     * Asserts {@code action} throws {@link Attn4jException} with {@code status} and a message
     * naming one of {@code names} as a word (e.g. "q" matches "q: shape" but not "qo_indptr").
     */
    public static Attn4jException assertAttn4j(Status status, List<String> names, Executable action) {
        Attn4jException e = assertThrows(Attn4jException.class, action);
        assertEquals(status, e.status(), () -> "status of: " + e.getMessage());
        assertNames(e.getMessage(), names);
        return e;
    }

    public static void assertNames(String message, List<String> names) {
        for (String n : names) {
            if (namesWord(message, n)) {
                return;
            }
        }
        fail("message does not name any of " + names + ": \"" + message + "\"");
    }

    static boolean namesWord(String message, String name) {
        if (message == null) {
            return false;
        }
        Pattern p = Pattern.compile("(^|[^A-Za-z0-9_])" + Pattern.quote(name) + "($|[^A-Za-z0-9_])",
                Pattern.CASE_INSENSITIVE);
        return p.matcher(message).find();
    }
}
