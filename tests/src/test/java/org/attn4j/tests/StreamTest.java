package org.attn4j.tests;

import static org.attn4j.testing.Checks.assertAttn4j;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.util.List;

import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;
import org.attn4j.DType;
import org.attn4j.Device;
import org.attn4j.DeviceArena;
import org.attn4j.Status;
import org.attn4j.Stream;
import org.attn4j.Tensor;
import org.junit.jupiter.api.Test;

/** Streams and graphs on a CPU Attn4j: streams are no-ops so code is device-agnostic; graphs are unsupported. */
class StreamTest extends LibFixture {

    @Test
    void streamsAreNoOpsOnCpu() {
        try (Stream s = lib.newStream()) {
            assertTrue(s.isOpen());
            assertFalse(s.isBorrowed());
            assertEquals(0L, s.nativeHandle());
            s.synchronize();
        }
    }

    @Test
    void currentStreamFollowsUseAndClose() {
        try (Arena arena = Arena.ofConfined(); DeviceArena a = lib.newDeviceArena()) {
            assertNull(lib.currentStream());
            Stream s = lib.newStream();
            lib.useStream(s);
            assertSame(s, lib.currentStream());
            Tensor src = Tensor.ofFloats(arena, DType.F32, new float[] {1, 2, 3}, 3);
            Tensor dst = a.allocatePinned(DType.F32, 3);
            lib.copyAsync(src, dst); // enqueued on s: done by synchronize (at once on CPU)
            s.synchronize();
            assertArrayEquals(new float[] {1, 2, 3}, dst.toFloatArray());
            lib.useDefaultStream();
            assertNull(lib.currentStream());
            lib.useStream(s);
            s.close(); // the current stream: the lib reverts to the default one
            assertNull(lib.currentStream());
            s.close(); // idempotent
            assertThrows(IllegalStateException.class, s::synchronize);
            assertThrows(IllegalStateException.class, () -> lib.useStream(s));
            lib.copy(src, dst); // still usable
        }
    }

    @Test
    void streamArgumentsChecked() {
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("stream"), () -> lib.useStream(null));
        try (Attn4j other = Attn4j.open(Device.cpu(), 1); Stream foreign = other.newStream()) {
            assertAttn4j(Status.INVALID_ARGUMENT, List.of("stream"), () -> lib.useStream(foreign));
            assertNull(lib.currentStream());
        }
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("lib"), () -> Stream.wrap(null, 0));
        assertAttn4j(Status.INVALID_ARGUMENT, List.of("cuda_stream"), () -> Stream.wrap(lib, 0x1000));
        try (Stream borrowed = Stream.wrap(lib, 0)) {
            assertTrue(borrowed.isBorrowed());
            borrowed.synchronize();
        }
    }

    @Test
    void streamOutlivesItsLib() {
        Attn4j own = Attn4j.open(Device.cpu(), 1);
        Stream s = own.newStream();
        own.useStream(s);
        own.close();
        s.synchronize(); // the stream keeps the native context alive
        s.close();
        assertThrows(IllegalStateException.class, own::newStream);
    }

    @Test
    void graphsAreUnsupportedOnCpu() {
        try (Stream s = lib.newStream()) {
            lib.useStream(s);
            Attn4jException e = assertThrows(Attn4jException.class, s::beginCapture);
            assertEquals(Status.UNSUPPORTED, e.status(), e.getMessage());
            assertTrue(e.getMessage().toLowerCase().contains("cpu") || e.getMessage().toLowerCase().contains("graph"),
                    e.getMessage());
            assertEquals(Status.UNSUPPORTED, assertThrows(Attn4jException.class, s::endCapture).status());
            s.synchronize(); // still usable
        } finally {
            lib.useDefaultStream();
        }
    }
}
