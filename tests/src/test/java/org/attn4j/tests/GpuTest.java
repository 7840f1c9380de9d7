package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.Device;
import org.attn4j.DType;
import org.attn4j.KvFormat;
import org.attn4j.Status;
import org.attn4j.TieredKvCache;
import org.attn4j.testing.TestDevice;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** CUDA: skipped, with the reason shown, where no device is visible. */
class GpuTest {
    @BeforeEach
    void needGpu() {
        TestDevice.assumeCuda();
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
    void tieredCacheOnGpuSaysUnsupported() {
        try (Attn4j lib = Attn4j.open(Device.cuda(0))) {
            Attn4jException e = assertThrows(Attn4jException.class, () -> TieredKvCache.builder(lib).kvHeads(1)
                    .headDim(64).numPages(4, 4).format(KvFormat.quantized(DType.INT8, 64)).build());
            assertEquals(Status.UNSUPPORTED, e.status());
            org.attn4j.testing.Checks.assertNames(e.getMessage(), java.util.List.of("lib"));
        }
    }
}
