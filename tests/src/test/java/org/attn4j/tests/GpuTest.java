package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.Device;
import org.attn4j.PagedKvCache;
import org.attn4j.Status;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Assumptions;

/** CUDA: skipped, with the reason shown, where no device is visible. */
class GpuTest {
    @BeforeEach
    void needGpu() {
        int n = Attn4j.cudaDeviceCount();
        Assumptions.assumeTrue(n > 0, "no CUDA device: attn4j_device_count(CUDA) = 0 (no GPU, no driver, "
                + "or a CPU-only build; buildInfo: " + Attn4j.buildInfo().replace('\n', ' ') + ")");
    }

    @Test
    void openEveryDevice() {
        int n = Attn4j.cudaDeviceCount();
        for (int i = 0; i < n; i++) {
            try (Attn4j lib = Attn4j.open(Device.cuda(i))) {
                assertEquals(Device.cuda(i), lib.device());
            }
        }
        Attn4jException e = assertThrows(Attn4jException.class, () -> Attn4j.open(Device.cuda(n)).close());
        org.attn4j.testing.Checks.assertNames(e.getMessage(), java.util.List.of("device", "device_id", "cuda"));
    }

    @Test
    void cacheOnGpuSaysUnsupported() {
        try (Attn4j lib = Attn4j.open(Device.cuda(0))) {
            Attn4jException e = assertThrows(Attn4jException.class,
                    () -> PagedKvCache.builder(lib).kvHeads(1).headDim(64).numPages(4).build());
            assertEquals(Status.UNSUPPORTED, e.status());
        }
    }
}
