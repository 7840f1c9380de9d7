package org.attn4j.tests.quant;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import java.util.zip.CRC32;

import org.attn4j.Attn4jException;
import org.attn4j.Status;
import org.attn4j.quant.Calibration;
import org.attn4j.quant.Calibrator;
import org.attn4j.quant.Npy;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.api.io.TempDir;

/** {@link Calibration}: the file format round trip and every rejected file. */
class CalibrationTest {
    static final int L = 2, H = 3, D = 32, BITS = 2, G = 32;
    static final int HEADER = 32;

    @TempDir
    Path dir;
    Calibration cal;
    Path file;

    /** A random orthogonal matrix: rotation() of the eigenvectors of a random symmetric matrix. */
    static float[] randomRotation(Random rnd, int d) {
        double[] a = new double[d * d];
        for (int i = 0; i < d; i++) {
            for (int j = 0; j <= i; j++) {
                a[i * d + j] = a[j * d + i] = rnd.nextGaussian();
            }
        }
        return Calibrator.rotation(Calibrator.eigen(a, d).vectors(), d);
    }

    static Calibration randomCalibration(long seed) {
        Random rnd = new Random(seed);
        float[][] k = new float[L][H * D * D], v = new float[L][H * D * D];
        for (int l = 0; l < L; l++) {
            for (int h = 0; h < H; h++) {
                System.arraycopy(randomRotation(rnd, D), 0, k[l], h * D * D, D * D);
                System.arraycopy(randomRotation(rnd, D), 0, v[l], h * D * D, D * D);
            }
        }
        float[] kc = new float[L * H], vc = new float[L * H];
        for (int i = 0; i < L * H; i++) {
            kc[i] = 0.8f + 0.02f * i;
            vc[i] = 1f - 0.01f * i;
        }
        return Calibration.of(L, H, D, BITS, G, k, v, kc, vc);
    }

    @BeforeEach
    void setUp() throws IOException {
        cal = randomCalibration(7);
        file = dir.resolve("cal.a4jcal");
        cal.save(file);
    }

    private Path write(String name, byte[] bytes) throws IOException {
        Path p = dir.resolve(name);
        Files.write(p, bytes);
        return p;
    }

    /** Re-stamps the CRC so that only the intended defect remains. */
    static byte[] fixCrc(byte[] b) {
        CRC32 crc = new CRC32();
        crc.update(b, 0, b.length - 4);
        ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).putInt(b.length - 4, (int) crc.getValue());
        return b;
    }

    static void assertBad(Executable call, String... phrases) {
        Attn4jException e = assertThrows(Attn4jException.class, call);
        assertEquals(Status.INVALID_ARGUMENT, e.status());
        for (String s : phrases) {
            assertTrue(e.getMessage().contains(s), () -> "'" + s + "' in: " + e.getMessage());
        }
    }

    @Test
    void roundTrip() throws IOException {
        assertEquals(HEADER + 8L * L * H + 8L * L * H * D * D + 4, Files.size(file));
        Calibration c = Calibration.load(file);
        assertEquals(1, c.version());
        assertEquals(L, c.layers());
        assertEquals(H, c.kvHeads());
        assertEquals(D, c.headDim());
        assertEquals(BITS, c.bits());
        assertEquals(G, c.groupSize());
        for (int l = 0; l < L; l++) {
            float[] ks = c.kRotations(l), vs = c.vRotations(l);
            assertArrayEquals(cal.kRotations(l), ks);
            assertArrayEquals(cal.vRotations(l), vs);
            assertArrayEquals(cal.kClips(l), c.kClips(l));
            assertArrayEquals(cal.vClips(l), c.vClips(l));
            for (int h = 0; h < H; h++) {
                assertArrayEquals(Arrays.copyOfRange(ks, h * D * D, (h + 1) * D * D), c.kRotation(l, h));
                assertArrayEquals(Arrays.copyOfRange(vs, h * D * D, (h + 1) * D * D), c.vRotation(l, h));
                assertEquals(cal.kClip(l, h), c.kClip(l, h));
                assertEquals(cal.vClip(l, h), c.vClip(l, h));
                assertEquals(c.kClips(l)[h], c.kClip(l, h));
            }
        }
        assertThrows(IndexOutOfBoundsException.class, () -> c.kRotation(L, 0));
        assertThrows(IndexOutOfBoundsException.class, () -> c.vClip(0, H));
    }

    @Test
    void accessorsReturnCopies() {
        cal.kRotations(0)[0] = 42f;
        cal.kRotation(0, 0)[0] = 42f;
        assertTrue(cal.kRotation(0, 0)[0] != 42f);
    }

    @Test
    void hadamardFactory() {
        Calibration h = Calibration.hadamard(1, 2, 64, 4, 32, 0.96f, 0.92f);
        assertArrayEquals(Calibrator.hadamardMatrix(64), h.kRotation(0, 1));
        assertEquals(0.92f, h.vClip(0, 0));
    }

    @Test
    void loadWithExpectedShapeNamesTheField() throws IOException {
        Calibration.load(file, L, H, D, BITS, G);
        assertBad(() -> Calibration.load(file, L + 1, H, D, BITS, G), file.toString(), "layers 2", "the cache has 3");
        assertBad(() -> Calibration.load(file, L, 8, D, BITS, G), "kv_heads 3", "the cache has 8");
        assertBad(() -> Calibration.load(file, L, H, 128, BITS, G), "head_dim 32", "the cache has 128");
        assertBad(() -> Calibration.load(file, L, H, D, 4, G), "bits 2", "the cache has 4");
        assertBad(() -> Calibration.load(file, L, H, D, BITS, 64), "group_size 32", "the cache has 64");
        assertBad(() -> cal.requireMatches(L, H, 64, BITS, G), "calibration", "head_dim 32", "the cache has 64");
    }

    @Test
    void rejectsOtherFiles() throws IOException {
        Path npy = dir.resolve("x.npy");
        Npy.write(npy, new long[] {4}, new float[4]);
        assertBad(() -> Calibration.load(npy), npy.toString(), "not an attn4j calibration file");
        assertBad(() -> Calibration.load(write("empty", new byte[0])), "not an attn4j calibration file");
        assertBad(() -> Calibration.load(write("short", "A4J".getBytes())), "truncated");
        assertBad(() -> Calibration.load(write("other", "A4JXYZ\0\0\1\0\0\0".getBytes())), "not an attn4j calibration file");
        assertThrows(NoSuchFileException.class, () -> Calibration.load(dir.resolve("missing")));
    }

    @Test
    void rejectsOtherVersion() throws IOException {
        byte[] b = Files.readAllBytes(file);
        ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).putInt(8, 2);
        Path p = write("v2.a4jcal", fixCrc(b));
        assertBad(() -> Calibration.load(p), p.toString(), "version 2", "reads version 1");
        // the version is reported even when the rest would not parse as version 1
        assertBad(() -> Calibration.load(write("v2short", Arrays.copyOf(b, 12))), "version 2");
    }

    @Test
    void rejectsTruncated() throws IOException {
        byte[] b = Files.readAllBytes(file);
        for (int len : new int[] {8, 11, 20, b.length - 100, b.length - 1}) {
            Path p = write("cut" + len, Arrays.copyOf(b, len));
            assertBad(() -> Calibration.load(p), p.toString(), "truncated");
        }
        Path p = write("long", Arrays.copyOf(b, b.length + 3));
        assertBad(() -> Calibration.load(p), "3 unexpected trailing bytes");
    }

    @Test
    void rejectsCorruption() throws IOException {
        byte[] b = Files.readAllBytes(file);
        b[HEADER + 8 * L * H + 1234] ^= 0x10;
        Path p = write("flip", b);
        assertBad(() -> Calibration.load(p), p.toString(), "corrupted", "CRC32");
    }

    @Test
    void rejectsNonOrthogonalNamingLayerAndHead() throws IOException {
        byte[] b = Files.readAllBytes(file);
        int mat = H * D * D * 4;
        // V rotation of layer 1, head 2: scale one entry
        int off = HEADER + 8 * L * H + 2 * mat + mat + 2 * D * D * 4 + 4 * 5;
        ByteBuffer bb = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        bb.putFloat(off, bb.getFloat(off) + 0.05f);
        Path p = write("skew", fixCrc(b));
        assertBad(() -> Calibration.load(p), p.toString(), "V rotation of layer 1 head 2 is not orthogonal");
        byte[] n = Files.readAllBytes(file);
        ByteBuffer.wrap(n).order(ByteOrder.LITTLE_ENDIAN).putFloat(HEADER + 8 * L * H, Float.NaN);
        assertBad(() -> Calibration.load(write("nan", fixCrc(n))), "K rotation of layer 0 head 0 is not orthogonal");
    }

    @Test
    void rejectsClipOutOfRange() throws IOException {
        for (float bad : new float[] {0f, -0.5f, 1.5f, Float.NaN}) {
            byte[] b = Files.readAllBytes(file);
            ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).putFloat(HEADER + 4, bad); // K clip of layer 0 head 1
            Path p = write("clip" + bad, fixCrc(b));
            assertBad(() -> Calibration.load(p), "K clip ratio of layer 0 head 1", "(0, 1]");
        }
        byte[] b = Files.readAllBytes(file);
        ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).putFloat(HEADER + 4 * L * H + 4 * (H + 2), 2f); // V, layer 1 head 2
        assertBad(() -> Calibration.load(write("vclip", fixCrc(b))), "V clip ratio of layer 1 head 2");
    }

    @Test
    void rejectsBadHeaderFields() throws IOException {
        byte[] b = Files.readAllBytes(file);
        ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).putInt(24, 3);
        assertBad(() -> Calibration.load(write("bits3", fixCrc(b))), "bits must be 2, 4 or 8, got 3");
        byte[] g = Files.readAllBytes(file);
        ByteBuffer.wrap(g).order(ByteOrder.LITTLE_ENDIAN).putInt(28, 48);
        assertBad(() -> Calibration.load(write("g48", fixCrc(g))), "group_size");
        byte[] huge = Files.readAllBytes(file);
        ByteBuffer.wrap(huge).order(ByteOrder.LITTLE_ENDIAN).putInt(12, 4000).putInt(16, 4000);
        assertBad(() -> Calibration.load(write("huge", huge)), "too large");
    }

    @Test
    void ofValidates() {
        float[][] k = {cal.kRotations(0), cal.kRotations(1)};
        float[] clips = new float[L * H];
        Arrays.fill(clips, 1f);
        assertBad(() -> Calibration.of(L, H, D, BITS, G, k, k, new float[L * H], clips), "K clip ratio of layer 0 head 0");
        assertBad(() -> Calibration.of(L, H, D, BITS, G, k, new float[][] {k[0]}, clips, clips), "expected 2 layers");
        float[][] skew = {k[0].clone(), k[1]};
        skew[0][D * D + 3] = 2f;
        assertBad(() -> Calibration.of(L, H, D, BITS, G, skew, k, clips, clips), "K rotation of layer 0 head 1");
    }

    @Test
    void failedSaveLeavesTargetUntouched() throws IOException {
        Path target = Files.createDirectory(dir.resolve("occupied.a4jcal"));
        Files.write(target.resolve("inside"), new byte[] {7});
        assertThrows(IOException.class, () -> cal.save(target));
        assertTrue(Files.isDirectory(target));
        assertArrayEquals(new byte[] {7}, Files.readAllBytes(target.resolve("inside")));
        try (var s = Files.list(dir)) {
            assertTrue(s.noneMatch(f -> f.getFileName().toString().endsWith(".tmp")), "no temporary file left");
        }
        // a save over an existing file replaces it whole
        Calibration other = randomCalibration(8);
        other.save(file);
        assertArrayEquals(other.kRotations(1), Calibration.load(file).kRotations(1));
    }
}
