package org.attn4j.tests;

import static org.attn4j.testing.Checks.assertAttn4j;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
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
import org.attn4j.Tensor;
import org.attn4j.testing.Checks;
import org.junit.jupiter.api.Test;

/** DeviceArena and copies on a CPU Attn4j, where "device" memory is host memory (runs in CI). */
class DeviceArenaTest extends LibFixture {

    private static float[] random(Random rnd, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) rnd.nextGaussian();
        }
        return x;
    }

    @Test
    void arenaMemoryIsHostMemoryOnCpu() {
        try (DeviceArena a = lib.newDeviceArena()) {
            assertEquals(Device.cpu(), a.device());
            Tensor t = Tensor.allocate(a, DType.F32, 3, 4);
            Tensor p = a.allocatePinned(DType.BF16, 2, 8);
            for (Tensor x : List.of(t, p)) {
                assertTrue(x.isHost(), x::toString);
                assertEquals(Device.cpu(), x.device());
                assertTrue(x.isContiguous());
                assertEquals(0, x.address() % 64, "64-byte aligned: " + x);
                x.fill(1.5f);
                x.setFlat(5, -2f);
                assertEquals(-2f, x.getFlat(5));
                assertEquals(1.5f, x.toFloatArray()[0]);
            }
            assertEquals(12 * 4, t.byteSize());
            assertEquals(16 * 2, p.segment().byteSize());
            Tensor empty = Tensor.allocate(a, DType.F16, 0, 4);
            assertEquals(0, empty.elementCount());
        }
    }

    @Test
    void closeFreesAndRejectsLaterUse() {
        DeviceArena a = lib.newDeviceArena();
        Tensor t = Tensor.allocate(a, DType.F32, 16);
        Tensor p = a.allocatePinned(DType.F32, 16);
        assertTrue(a.isOpen());
        a.close();
        a.close(); // idempotent
        assertFalse(a.isOpen());
        assertTrue(a.toString().contains("closed"));
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> Tensor.allocate(a, DType.F32, 4));
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
        assertThrows(IllegalStateException.class, () -> a.allocatePinned(DType.F32, 4));
        assertThrows(IllegalStateException.class, () -> t.getFlat(0)); // the segment's scope is gone
        try (Arena arena = Arena.ofConfined()) {
            Tensor host = Tensor.allocate(arena, DType.F32, 16);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("src"), () -> lib.copy(p, host));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("dst"), () -> lib.copy(host, t));
        }
    }

    @Test
    void closingTheLibClosesItsArenas() {
        Attn4j own = Attn4j.open(Device.cpu(), 1);
        DeviceArena a = own.newDeviceArena();
        Tensor.allocate(a, DType.F32, 8);
        own.close();
        assertFalse(a.isOpen());
        a.close(); // still safe
        assertThrows(IllegalStateException.class, own::newDeviceArena);
    }

    @Test
    void copiesRoundTrip() {
        long seed = Checks.baseSeed() + 300;
        Random rnd = new Random(seed);
        try (Arena arena = Arena.ofConfined(); DeviceArena a = lib.newDeviceArena()) {
            for (DType dt : new DType[] {DType.F32, DType.F16, DType.BF16}) {
                float[] x = random(rnd, 2 * 3 * 64);
                Tensor src = Tensor.ofFloats(arena, dt, x, 2, 3, 64);
                Tensor dev = Tensor.allocate(a, dt, 2, 3, 64);
                Tensor pinned = a.allocatePinned(dt, 2, 3, 64);
                Tensor back = Tensor.allocate(arena, dt, 2, 3, 64);
                lib.copy(src, dev);
                lib.copyAsync(dev, pinned);
                lib.copy(pinned, back);
                assertArrayEquals(src.toFloatArray(), back.toFloatArray(), dt + " seed " + seed);
            }
            Tensor ints = Tensor.ofInts(arena, 3, 1, 4, 1, 5);
            Tensor intsDev = Tensor.allocate(a, DType.I32, 5);
            lib.copy(ints, intsDev);
            assertArrayEquals(ints.toFloatArray(), intsDev.toFloatArray());
            lib.copy(Tensor.allocate(a, DType.F32, 0), Tensor.allocate(arena, DType.F32, 0)); // empty: nothing to do
        }
    }

    @Test
    void copyArgumentsCheckedInJava() {
        try (Arena arena = Arena.ofConfined(); DeviceArena a = lib.newDeviceArena()) {
            Tensor f32 = Tensor.allocate(a, DType.F32, 4, 8);
            Tensor bf16 = Tensor.allocate(a, DType.BF16, 4, 8);
            Tensor other = Tensor.allocate(a, DType.F32, 8, 4);
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("src"), () -> lib.copy(null, f32));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("dst"), () -> lib.copyAsync(f32, null));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("dst"), () -> lib.copy(f32, bf16));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("dst"), () -> lib.copy(f32, other));
            Tensor strided = Tensor.of(arena.allocate(4 * 16 * 4, 64), DType.F32, new long[] {4, 8},
                    new long[] {16, 1});
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("src"), () -> lib.copy(strided, f32));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("dst"), () -> lib.copyAsync(f32, strided));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("dtype"), () -> Tensor.allocate(a, DType.INT4, 8));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("shape[1]"), () -> a.allocatePinned(DType.F32, 2, -1));
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("arena"), () -> Tensor.allocate((DeviceArena) null,
                    DType.F32, 2));
        }
    }
}
