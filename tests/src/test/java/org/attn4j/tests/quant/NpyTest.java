package org.attn4j.tests.quant;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Arrays;

import org.attn4j.Attn4jException;
import org.attn4j.Status;
import org.attn4j.quant.Npy;
import org.attn4j.quant.Npy.NpyArray;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@link Npy}: round trips, files as NumPy writes them, and every malformed input. */
class NpyTest {
    @TempDir
    Path dir;

    /** The bytes of a .npy: magic, version, header padded with spaces + '\n' to a multiple of 64. */
    static byte[] npy(int major, String dict, byte[] data) {
        int prefix = major == 1 ? 10 : 12;
        StringBuilder h = new StringBuilder(dict);
        while ((prefix + h.length() + 1) % 64 != 0) {
            h.append(' ');
        }
        h.append('\n');
        byte[] hb = h.toString().getBytes(major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1);
        ByteBuffer b = ByteBuffer.allocate(prefix + hb.length + data.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(new byte[] {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y', (byte) major, 0});
        if (major == 1) {
            b.putShort((short) hb.length);
        } else {
            b.putInt(hb.length);
        }
        return b.put(hb).put(data).array();
    }

    static byte[] f4(float... v) {
        ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float f : v) {
            b.putFloat(f);
        }
        return b.array();
    }

    private Path file(String name, byte[] bytes) throws IOException {
        Path p = dir.resolve(name);
        Files.write(p, bytes);
        return p;
    }

    private Attn4jException bad(Path p, String... phrases) {
        Attn4jException e = assertThrows(Attn4jException.class, () -> Npy.read(p));
        assertEquals(Status.INVALID_ARGUMENT, e.status());
        assertTrue(e.getMessage().contains(p.toString()), () -> "names the file: " + e.getMessage());
        for (String s : phrases) {
            assertTrue(e.getMessage().contains(s), () -> "'" + s + "' in: " + e.getMessage());
        }
        return e;
    }

    @Test
    void roundTripsShapes() throws IOException {
        long[][] shapes = {{2, 3}, {5}, {}, {0, 4}, {2, 3, 4}, {1, 2, 3, 4}};
        for (long[] shape : shapes) {
            int n = (int) Arrays.stream(shape).reduce(1, (a, b) -> a * b);
            float[] data = new float[n];
            for (int i = 0; i < n; i++) {
                data[i] = i * 0.5f - 3 + (i == 1 ? Float.MIN_VALUE : 0);
            }
            Path p = dir.resolve("a" + shape.length + ".npy");
            Npy.write(p, shape, data);
            byte[] raw = Files.readAllBytes(p);
            int headerLen = (raw[8] & 0xff) | (raw[9] & 0xff) << 8;
            assertEquals(0, (10 + headerLen) % 64, "header aligned to 64 like numpy.save");
            assertEquals('\n', raw[10 + headerLen - 1]);
            NpyArray a = Npy.read(p);
            assertArrayEquals(shape, a.shape());
            assertArrayEquals(data, a.data());
        }
    }

    @Test
    void writesNumpyShapeSpelling() throws IOException {
        Path p = dir.resolve("s.npy");
        Npy.write(p, new long[] {5}, new float[5]);
        byte[] raw = Files.readAllBytes(p);
        String header = new String(raw, 10, raw.length - 10 - 20, StandardCharsets.ISO_8859_1);
        assertTrue(header.startsWith("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"), header);
    }

    @Test
    void readsFileAsNumpyWritesIt() throws IOException {
        // numpy.save(np.arange(6, dtype='<f4').reshape(2, 3)) (checked with NumPy 2.4): the 59-character
        // dict, 20 spaces of room to grow axis 0, padding and '\n': 118 header bytes, 128 with the prefix.
        String dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + " ".repeat(20);
        byte[] bytes = npy(1, dict, f4(0, 1, 2, 3, 4, 5));
        assertEquals(128 + 24, bytes.length);
        assertEquals(118, (bytes[8] & 0xff) | (bytes[9] & 0xff) << 8);
        NpyArray a = Npy.read(file("np.npy", bytes));
        assertArrayEquals(new long[] {2, 3}, a.shape());
        assertArrayEquals(new float[] {0, 1, 2, 3, 4, 5}, a.data());
        Path mine = dir.resolve("mine.npy");
        Npy.write(mine, new long[] {2, 3}, new float[] {0, 1, 2, 3, 4, 5});
        assertArrayEquals(bytes, Files.readAllBytes(mine), "Npy.write produces numpy.save's bytes");
        assertEquals(2, a.dim(0));
        assertEquals(3, a.dim(1));
        // without the growth padding (older numpy): 64-byte aligned as well
        NpyArray b = Npy.read(file("np_old.npy",
                npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f4(0, 1, 2, 3, 4, 5))));
        assertArrayEquals(a.data(), b.data());
    }

    @Test
    void readsVersions2And3AndOtherKeyOrder() throws IOException {
        String dict = "{'shape': (3,), 'fortran_order': False, 'descr': '<f4'}";
        for (int major : new int[] {2, 3}) {
            NpyArray a = Npy.read(file("v" + major + ".npy", npy(major, dict, f4(1, 2, 3))));
            assertArrayEquals(new float[] {1, 2, 3}, a.data());
        }
    }

    @Test
    void convertsF2AndF8() throws IOException {
        ByteBuffer h = ByteBuffer.allocate(6).order(ByteOrder.LITTLE_ENDIAN);
        h.putShort(Float.floatToFloat16(1.5f)).putShort(Float.floatToFloat16(-2f)).putShort(Float.floatToFloat16(65504f));
        NpyArray a = Npy.read(file("h.npy", npy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", h.array())));
        assertArrayEquals(new float[] {1.5f, -2f, 65504f}, a.data());
        ByteBuffer d = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN).putDouble(0.1).putDouble(-1e3);
        NpyArray b = Npy.read(file("d.npy", npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }", d.array())));
        assertArrayEquals(new float[] {0.1f, -1000f}, b.data());
    }

    @Test
    void rejectsNotNpy() throws IOException {
        bad(file("text.npy", "hello, world\n".getBytes(StandardCharsets.US_ASCII)), "not a .npy file");
        bad(file("empty.npy", new byte[0]), "not a .npy file");
    }

    @Test
    void rejectsTruncatedHeader() throws IOException {
        byte[] full = npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f4(0, 1, 2, 3, 4, 5));
        bad(file("cut.npy", Arrays.copyOf(full, 40)), "truncated .npy header");
        bad(file("cut8.npy", Arrays.copyOf(full, 8)), "truncated .npy header");
    }

    @Test
    void rejectsUnsupportedVersion() throws IOException {
        byte[] b = npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", f4(1));
        b[6] = 4;
        bad(file("v4.npy", b), "version 4.0");
    }

    @Test
    void rejectsMalformedHeaderDict() throws IOException {
        bad(file("syntax.npy", npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3 }", f4(0, 1, 2, 3, 4, 5))),
                "malformed .npy header");
        bad(file("nodict.npy", npy(1, "descr=<f4", f4(1))), "malformed .npy header");
        bad(file("nokey.npy", npy(1, "{'descr': '<f4', 'shape': (1,), }", f4(1))), "'fortran_order'");
        bad(file("negdim.npy", npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", f4(1))),
                "malformed .npy header");
    }

    @Test
    void rejectsBigEndianNamingIt() throws IOException {
        ByteBuffer b = ByteBuffer.allocate(8).order(ByteOrder.BIG_ENDIAN).putFloat(1).putFloat(2);
        bad(file("be.npy", npy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", b.array())),
                "big-endian", "'>f4'");
    }

    @Test
    void rejectsOtherDtypes() throws IOException {
        bad(file("u2.npy", npy(1, "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }", new byte[4])),
                "'<u2'", "bfloat16", "'<f4'");
        bad(file("i4.npy", npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", new byte[8])),
                "unsupported dtype '<i4'");
        bad(file("rec.npy", npy(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", new byte[8])));
    }

    @Test
    void rejectsFortranOrder() throws IOException {
        bad(file("f.npy", npy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f4(0, 1, 2, 3, 4, 5))),
                "Fortran");
    }

    @Test
    void rejectsTruncatedAndOverlongData() throws IOException {
        String dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        bad(file("short.npy", npy(1, dict, f4(0, 1, 2, 3, 4))), "truncated data", "(2, 3)", "needs 24 bytes", "has 20");
        bad(file("long.npy", npy(1, dict, f4(0, 1, 2, 3, 4, 5, 6))), "4 bytes after the data");
    }

    @Test
    void missingFileIsIoException() {
        assertThrows(NoSuchFileException.class, () -> Npy.read(dir.resolve("nope.npy")));
    }

    @Test
    void requireShapeNamesArgumentAndShapes() {
        NpyArray a = new NpyArray(new long[] {2, 3, 4}, new float[24]);
        Npy.requireShape(a, "q.npy", -1, 3, 4);
        Npy.requireShape(a, "q.npy", 2, -1, -1);
        Attn4jException e = assertThrows(Attn4jException.class, () -> Npy.requireShape(a, "--k k.npy", -1, 8, 4));
        assertTrue(e.getMessage().contains("--k k.npy"), e.getMessage());
        assertTrue(e.getMessage().contains("(*, 8, 4)") && e.getMessage().contains("(2, 3, 4)"), e.getMessage());
        Attn4jException r = assertThrows(Attn4jException.class, () -> Npy.requireShape(a, "v", -1, -1));
        assertTrue(r.getMessage().contains("(*, *)"), r.getMessage());
        assertThrows(Attn4jException.class, () -> new NpyArray(new long[] {2, 2}, new float[3]));
    }

    @Test
    void failedWriteLeavesExistingFileUntouched() throws IOException {
        Path p = dir.resolve("keep.npy");
        Npy.write(p, new long[] {2}, new float[] {1, 2});
        byte[] before = Files.readAllBytes(p);
        Attn4jException e = assertThrows(Attn4jException.class, () -> Npy.write(p, new long[] {3}, new float[] {1, 2}));
        assertTrue(e.getMessage().contains("keep.npy"), e.getMessage());
        assertArrayEquals(before, Files.readAllBytes(p));
        // target is a non-empty directory: the move fails, nothing is left behind
        Path d = Files.createDirectory(dir.resolve("sub.npy"));
        Files.write(d.resolve("x"), new byte[] {1});
        assertThrows(IOException.class, () -> Npy.write(d, new long[] {1}, new float[] {1}));
        assertTrue(Files.isDirectory(d) && Files.exists(d.resolve("x")));
        try (var s = Files.list(dir)) {
            assertTrue(s.noneMatch(f -> f.getFileName().toString().endsWith(".tmp")), "no temporary file left");
        }
    }
}
