package org.attn4j.testing;

import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.Device;
import org.attn4j.Status;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.function.ThrowingSupplier;

/**
 * The device that device-aware tests run on: {@code -Dattn4j.test.device=cuda:0} (default
 * {@code cpu}). Asking for a CUDA device that is not there fails rather than skips: the run asked
 * for the GPU.
 */
public final class TestDevice {
    private TestDevice() {}

    public static final String PROPERTY = "attn4j.test.device";

    public static Device get() {
        String spec = System.getProperty(PROPERTY, "cpu").strip().toLowerCase(java.util.Locale.ROOT);
        if (spec.equals("cpu")) {
            return Device.cpu();
        }
        if (spec.startsWith("cuda:")) {
            return Device.cuda(Integer.parseInt(spec.substring(5)));
        }
        throw new IllegalArgumentException(PROPERTY + ": expected cpu or cuda:N, got \"" + spec + "\"");
    }

    public static Attn4j open() {
        return Attn4j.open(get());
    }

    /** Skips the calling test, saying why, where no CUDA device is visible. */
    public static void assumeCuda() {
        Assumptions.assumeTrue(Attn4j.cudaDeviceCount() > 0, () -> "no CUDA device: attn4j_device_count(CUDA) = 0 "
                + "(no GPU, no driver, or a CPU-only build; buildInfo: " + Attn4j.buildInfo().replace('\n', ' ') + ")");
    }

    /**
     * Runs {@code action}; on a CUDA {@code lib} an UNSUPPORTED answer (a shape or dtype that only
     * the CPU kernels cover) skips the test, showing the library's reason.
     */
    public static <T> T skipIfUnsupportedOnCuda(Attn4j lib, ThrowingSupplier<T> action) throws Throwable {
        try {
            return action.get();
        } catch (Attn4jException e) {
            if (lib.device().kind() == Device.Kind.CUDA && e.status() == Status.UNSUPPORTED) {
                Assumptions.abort("unsupported on " + lib.device() + ": " + e.getMessage());
            }
            throw e;
        }
    }
}
