package org.attn4j.tests;

import static org.attn4j.testing.Checks.assertAttn4j;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.util.List;
import java.util.Random;

import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.Device;
import org.attn4j.DeviceArena;
import org.attn4j.Status;
import org.attn4j.Stream;
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.attn4j.testing.TestDevice;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/** Device memory, copies and streams on CUDA: skipped, with the reason shown, where no device is visible. */
class CudaMemoryTest {
    private static Attn4j gpu;

    @BeforeAll
    static void open() {
        if (Attn4j.cudaDeviceCount() > 0) {
            gpu = Attn4j.open(Device.cuda(0));
        }
    }

    @AfterAll
    static void close() {
        if (gpu != null) {
            gpu.close();
        }
    }

    @BeforeEach
    void needGpu() {
        TestDevice.assumeCuda();
    }

    private static Tensor randomHost(Arena arena, DType dt, Random rnd, long... shape) {
        Tensor t = Tensor.allocate(arena, dt, shape);
        for (long i = 0; i < t.elementCount(); i++) {
            t.setFlat(i, (float) rnd.nextGaussian());
        }
        return t;
    }

    @Test
    void deviceTensorRoundTrip() {
        long seed = Checks.baseSeed() + 400;
        Random rnd = new Random(seed);
        try (Arena arena = Arena.ofConfined(); DeviceArena a = gpu.newDeviceArena()) {
            for (DType dt : new DType[] {DType.BF16, DType.F16, DType.F32, DType.I32}) {
                Tensor src = randomHost(arena, dt, rnd, 3, 8, 128);
                Tensor d1 = Tensor.allocate(a, dt, 3, 8, 128);
                Tensor d2 = Tensor.allocate(a, dt, 3, 8, 128);
                assertEquals(Device.cuda(0), d1.device());
                assertFalse(d1.isHost());
                assertNotEquals(0L, d1.address());
                Tensor back = Tensor.allocate(arena, dt, 3, 8, 128);
                gpu.copy(src, d1);
                gpu.copy(d1, d2); // device to device
                gpu.copy(d2, back);
                assertArrayEquals(src.toFloatArray(), back.toFloatArray(), dt + " seed " + seed);
            }
        }
    }

    @Test
    void pinnedAsyncCopiesOnAStream() {
        long seed = Checks.baseSeed() + 401;
        Random rnd = new Random(seed);
        try (DeviceArena a = gpu.newDeviceArena(); Stream s = gpu.newStream()) {
            assertNotEquals(0L, s.nativeHandle());
            gpu.useStream(s);
            Tensor up = a.allocatePinned(DType.BF16, 64, 1024);
            Tensor down = a.allocatePinned(DType.BF16, 64, 1024);
            assertTrue(up.isHost());
            for (long i = 0; i < up.elementCount(); i++) {
                up.setFlat(i, (float) rnd.nextGaussian());
            }
            Tensor dev = Tensor.allocate(a, DType.BF16, 64, 1024);
            gpu.copyAsync(up, dev);
            gpu.copyAsync(dev, down);
            s.synchronize();
            assertArrayEquals(up.toFloatArray(), down.toFloatArray(), "seed " + seed);
        } finally {
            if (gpu.currentStream() != null) {
                gpu.useDefaultStream();
            }
        }
        try (Stream borrowed = Stream.wrap(gpu, 0)) { // the legacy default stream, borrowed
            assertTrue(borrowed.isBorrowed());
            borrowed.synchronize();
        }
    }

    /** Device memory is never dereferenced from Java: every host accessor says to copy first. */
    @Test
    void hostAccessorsRefuseDeviceTensors() {
        try (DeviceArena a = gpu.newDeviceArena()) {
            Tensor d = Tensor.allocate(a, DType.F32, 4, 4);
            List<Executable> reads = List.of(() -> d.getFlat(0), () -> d.setFlat(0, 1f), () -> d.fill(0f),
                    d::toFloatArray, d::segment);
            for (Executable r : reads) {
                IllegalStateException e = assertThrows(IllegalStateException.class, r);
                assertTrue(e.getMessage().contains("cuda:0") && e.getMessage().contains("copy"), e.getMessage());
            }
        }
    }

    @Test
    void copiesBetweenContextsOfOtherDevicesRejected() {
        try (Attn4j cpu = Attn4j.open(Device.cpu(), 1); DeviceArena a = gpu.newDeviceArena();
                Arena arena = Arena.ofConfined()) {
            Tensor d = Tensor.allocate(a, DType.F32, 16);
            Tensor h = Tensor.allocate(arena, DType.F32, 16);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("src"), () -> cpu.copy(d, h));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("dst"), () -> cpu.copy(h, d));
            gpu.copy(h, d); // the owner copies fine
        }
    }

    @Test
    void closedArenaRejectsItsTensors() {
        DeviceArena a = gpu.newDeviceArena();
        Tensor d = Tensor.allocate(a, DType.F32, 16);
        a.close();
        try (Arena arena = Arena.ofConfined()) {
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("src"),
                    () -> gpu.copy(d, Tensor.allocate(arena, DType.F32, 16)));
        }
        assertThrows(IllegalStateException.class, () -> Tensor.allocate(a, DType.F32, 16));
    }
}
