package org.attn4j.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.zip.CRC32;

import org.attn4j.Attn4jException;
import org.attn4j.Status;

/**
 * Offline calibration of a quantized KV cache: per layer and KV head, the K and V rotations
 * (orthogonal {@code head_dim x head_dim}, row-major; a key is stored as {@code k R}) and clipping
 * ratios, made for one quantization format (bits, group size). Immutable; accessors return copies.
 *
 * <p>File format (version 1, little-endian):
 * <pre>
 *   magic "A4JCAL\0\0" | u32 version | u32 layers | u32 kv_heads | u32 head_dim | u32 bits | u32 group_size
 *   f32 k_clip[layers][kv_heads] | f32 v_clip[layers][kv_heads]
 *   per layer: f32 k_rotation[kv_heads][head_dim][head_dim], f32 v_rotation[kv_heads][head_dim][head_dim]
 *   u32 CRC32 of all bytes before it
 * </pre>
 * Errors: content problems (not a calibration file, other version, truncated, corrupted, not
 * orthogonal, clip out of range, mismatch with the cache) raise {@link Attn4jException} with
 * {@link Status#INVALID_ARGUMENT} and a message starting with the file name; file-system failures
 * are {@link IOException}s.
 */
public final class Calibration {
    public static final int VERSION = 1;
    /** Max |R R^T - I| accepted for a rotation. */
    public static final double ORTHOGONALITY_TOLERANCE = 1e-3;

    private static final byte[] MAGIC = "A4JCAL\0\0".getBytes(StandardCharsets.US_ASCII);
    private static final int HEADER_BYTES = 8 + 6 * 4;

    private final int layers, kvHeads, headDim, bits, groupSize;
    private final float[][] kRot, vRot; // [layer][kvHeads * d * d]
    private final float[] kClip, vClip; // [layer * kvHeads + head]

    private Calibration(int layers, int kvHeads, int headDim, int bits, int groupSize,
                        float[][] kRot, float[][] vRot, float[] kClip, float[] vClip) {
        this.layers = layers;
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.bits = bits;
        this.groupSize = groupSize;
        this.kRot = kRot;
        this.vRot = vRot;
        this.kClip = kClip;
        this.vClip = vClip;
    }

    /**
     * A validated calibration (copies the arrays). {@code kRotations[layer]} is
     * {@code [kvHeads][headDim][headDim]} row-major, {@code kClips[layer * kvHeads + head]}.
     */
    public static Calibration of(int layers, int kvHeads, int headDim, int bits, int groupSize,
                                 float[][] kRotations, float[][] vRotations, float[] kClips, float[] vClips) {
        checkFormat("", layers, kvHeads, headDim, bits, groupSize);
        long mat = (long) kvHeads * headDim * headDim;
        if (kRotations.length != layers || vRotations.length != layers) {
            throw invalid("rotations: expected " + layers + " layers, got K " + kRotations.length
                    + ", V " + vRotations.length);
        }
        for (int l = 0; l < layers; l++) {
            if (kRotations[l].length != mat || vRotations[l].length != mat) {
                throw invalid("rotations of layer " + l + ": expected " + mat + " floats ([kv_heads][head_dim][head_dim]), got K "
                        + kRotations[l].length + ", V " + vRotations[l].length);
            }
        }
        if (kClips.length != layers * kvHeads || vClips.length != layers * kvHeads) {
            throw invalid("clip ratios: expected " + layers * kvHeads + " ([layers][kv_heads]), got K "
                    + kClips.length + ", V " + vClips.length);
        }
        float[][] k = new float[layers][], v = new float[layers][];
        for (int l = 0; l < layers; l++) {
            k[l] = kRotations[l].clone();
            v[l] = vRotations[l].clone();
        }
        Calibration c = new Calibration(layers, kvHeads, headDim, bits, groupSize, k, v, kClips.clone(), vClips.clone());
        c.validate("");
        return c;
    }

    /** Hadamard rotations (head_dim a power of 2) and uniform clip ratios for every layer and head. */
    public static Calibration hadamard(int layers, int kvHeads, int headDim, int bits, int groupSize,
                                       float kClip, float vClip) {
        QuantReference.requirePowerOfTwo(headDim);
        float[] h = new float[headDim * headDim];
        for (int i = 0; i < headDim; i++) {
            h[i * headDim + i] = 1f;
            QuantReference.hadamard(h, i * headDim, headDim);
        }
        float[] layer = new float[kvHeads * headDim * headDim];
        for (int j = 0; j < kvHeads; j++) {
            System.arraycopy(h, 0, layer, j * h.length, h.length);
        }
        float[][] rot = new float[layers][];
        Arrays.fill(rot, layer);
        float[] kc = new float[layers * kvHeads], vc = new float[layers * kvHeads];
        Arrays.fill(kc, kClip);
        Arrays.fill(vc, vClip);
        return of(layers, kvHeads, headDim, bits, groupSize, rot, rot, kc, vc);
    }

    public int version() {
        return VERSION;
    }

    public int layers() {
        return layers;
    }

    public int kvHeads() {
        return kvHeads;
    }

    public int headDim() {
        return headDim;
    }

    public int bits() {
        return bits;
    }

    public int groupSize() {
        return groupSize;
    }

    /** K rotation of one head, [head_dim][head_dim] row-major. */
    public float[] kRotation(int layer, int head) {
        return matrix(kRot, layer, head);
    }

    public float[] vRotation(int layer, int head) {
        return matrix(vRot, layer, head);
    }

    public float kClip(int layer, int head) {
        return kClip[index(layer, head)];
    }

    public float vClip(int layer, int head) {
        return vClip[index(layer, head)];
    }

    /** A layer's K rotations, [kv_heads][head_dim][head_dim]: what the native cache takes (k_matrix). */
    public float[] kRotations(int layer) {
        checkLayer(layer);
        return kRot[layer].clone();
    }

    public float[] vRotations(int layer) {
        checkLayer(layer);
        return vRot[layer].clone();
    }

    /** A layer's K clip ratios, [kv_heads] (k_clip of the native cache). */
    public float[] kClips(int layer) {
        checkLayer(layer);
        return Arrays.copyOfRange(kClip, layer * kvHeads, (layer + 1) * kvHeads);
    }

    public float[] vClips(int layer) {
        checkLayer(layer);
        return Arrays.copyOfRange(vClip, layer * kvHeads, (layer + 1) * kvHeads);
    }

    /** Writes the file atomically (temporary file + move): on failure {@code file} is untouched. */
    public void save(Path file) throws IOException {
        ByteBuffer head = ByteBuffer.allocate(HEADER_BYTES + 8 * layers * kvHeads).order(ByteOrder.LITTLE_ENDIAN);
        head.put(MAGIC).putInt(VERSION).putInt(layers).putInt(kvHeads).putInt(headDim).putInt(bits).putInt(groupSize);
        for (float c : kClip) {
            head.putFloat(c);
        }
        for (float c : vClip) {
            head.putFloat(c);
        }
        head.flip();
        Npy.atomicWrite(file, ch -> {
            CRC32 crc = new CRC32();
            write(ch, crc, head);
            ByteBuffer buf = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
            for (int l = 0; l < layers; l++) {
                for (float[] m : new float[][] {kRot[l], vRot[l]}) {
                    for (float f : m) {
                        if (!buf.hasRemaining()) {
                            buf.flip();
                            write(ch, crc, buf);
                            buf.clear();
                        }
                        buf.putFloat(f);
                    }
                }
            }
            buf.flip();
            write(ch, crc, buf);
            ByteBuffer tail = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt((int) crc.getValue());
            tail.flip();
            Npy.writeFully(ch, tail);
        });
    }

    private static void write(FileChannel ch, CRC32 crc, ByteBuffer buf) throws IOException {
        crc.update(buf.duplicate());
        Npy.writeFully(ch, buf);
    }

    /** Reads and validates a calibration file. */
    public static Calibration load(Path file) throws IOException {
        byte[] bytes;
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            long size = ch.size();
            ByteBuffer pre = ByteBuffer.allocate(HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
            while (pre.hasRemaining() && ch.read(pre) >= 0) {
                // read the fixed header (or what there is of it)
            }
            pre.flip();
            int n = pre.remaining();
            byte[] magic = Arrays.copyOf(pre.array(), Math.min(n, MAGIC.length));
            if (!Arrays.equals(magic, Arrays.copyOf(MAGIC, magic.length)) || n == 0) {
                throw bad(file, "not an attn4j calibration file (bad magic; expected \"A4JCAL\")");
            }
            if (n < 12) {
                throw bad(file, "truncated calibration file (" + size + " bytes)");
            }
            int version = pre.getInt(8);
            if (version != VERSION) {
                throw bad(file, "calibration file version " + Integer.toUnsignedString(version)
                        + ", this attn4j reads version " + VERSION);
            }
            if (n < HEADER_BYTES) {
                throw bad(file, "truncated calibration file (" + size + " bytes, the header alone is " + HEADER_BYTES + ")");
            }
            int layers = pre.getInt(12), kvHeads = pre.getInt(16), headDim = pre.getInt(20);
            int bits = pre.getInt(24), group = pre.getInt(28);
            checkFormat(file + ": ", layers, kvHeads, headDim, bits, group);
            long expect = expectedSize(layers, kvHeads, headDim);
            if (size < expect) {
                throw bad(file, "truncated calibration file: " + layers + " layers x " + kvHeads + " KV heads x head_dim "
                        + headDim + " need " + expect + " bytes, the file has " + size);
            }
            if (size > expect) {
                throw bad(file, "calibration file has " + (size - expect) + " unexpected trailing bytes");
            }
            if (size > Integer.MAX_VALUE - 8) {
                throw bad(file, "calibration file too large (" + size + " bytes)");
            }
        }
        bytes = Files.readAllBytes(file);
        ByteBuffer b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        CRC32 crc = new CRC32();
        crc.update(bytes, 0, bytes.length - 4);
        int stored = b.getInt(bytes.length - 4);
        if ((int) crc.getValue() != stored) {
            throw bad(file, "calibration file is corrupted (CRC32 mismatch: stored " + Integer.toHexString(stored)
                    + ", computed " + Long.toHexString(crc.getValue()) + ")");
        }
        b.position(12);
        int layers = b.getInt(), kvHeads = b.getInt(), headDim = b.getInt(), bits = b.getInt(), group = b.getInt();
        float[] kc = new float[layers * kvHeads], vc = new float[layers * kvHeads];
        b.asFloatBuffer().get(kc);
        b.position(b.position() + 4 * kc.length);
        b.asFloatBuffer().get(vc);
        b.position(b.position() + 4 * vc.length);
        int mat = kvHeads * headDim * headDim;
        float[][] k = new float[layers][mat], v = new float[layers][mat];
        for (int l = 0; l < layers; l++) {
            b.asFloatBuffer().get(k[l]);
            b.position(b.position() + 4 * mat);
            b.asFloatBuffer().get(v[l]);
            b.position(b.position() + 4 * mat);
        }
        Calibration c = new Calibration(layers, kvHeads, headDim, bits, group, k, v, kc, vc);
        c.validate(file + ": ");
        return c;
    }

    /**
     * Loads a calibration and checks that it was made for this cache: the message names the first
     * field that differs ("file says head_dim 64, the cache has 128").
     */
    public static Calibration load(Path file, int expectedLayers, int expectedKvHeads, int expectedHeadDim,
                                   int bits, int groupSize) throws IOException {
        Calibration c = load(file);
        c.requireMatches(file + ": calibration file says", expectedLayers, expectedKvHeads, expectedHeadDim, bits, groupSize);
        return c;
    }

    /**
     * Checks that this calibration was made for a cache of this shape and format; the message names
     * the first field that differs ("calibration: made for head_dim 64, the cache has 128").
     */
    public void requireMatches(int layers, int kvHeads, int headDim, int bits, int groupSize) {
        requireMatches("calibration: made for", layers, kvHeads, headDim, bits, groupSize);
    }

    private void requireMatches(String says, int layers, int kvHeads, int headDim, int bits, int groupSize) {
        mismatch(says, "layers", this.layers, layers);
        mismatch(says, "kv_heads", this.kvHeads, kvHeads);
        mismatch(says, "head_dim", this.headDim, headDim);
        mismatch(says, "bits", this.bits, bits);
        mismatch(says, "group_size", this.groupSize, groupSize);
    }

    private static void mismatch(String says, String field, int mine, int expected) {
        if (mine != expected) {
            throw invalid(says + " " + field + " " + mine + ", the cache has " + expected);
        }
    }

    static long expectedSize(int layers, int kvHeads, int headDim) {
        return HEADER_BYTES + 8L * layers * kvHeads + 8L * layers * kvHeads * headDim * headDim + 4;
    }

    private static void checkFormat(String where, int layers, int kvHeads, int headDim, int bits, int group) {
        if (layers <= 0 || layers > 4096) {
            throw invalid(where + "layers must be in 1..4096, got " + layers);
        }
        if (kvHeads <= 0 || kvHeads > 4096) {
            throw invalid(where + "kv_heads must be in 1..4096, got " + kvHeads);
        }
        if (headDim <= 0 || headDim > 1024) {
            throw invalid(where + "head_dim must be in 1..1024, got " + headDim);
        }
        if (bits != 2 && bits != 4 && bits != 8) {
            throw invalid(where + "bits must be 2, 4 or 8, got " + bits);
        }
        if ((group != 32 && group != 64 && group != 128) || headDim % group != 0) {
            throw invalid(where + "group_size must be 32, 64 or 128 and divide head_dim " + headDim + ", got " + group);
        }
        if ((long) layers * kvHeads * headDim * headDim > Integer.MAX_VALUE) {
            throw invalid(where + "layers x kv_heads x head_dim^2 too large: " + layers + " x " + kvHeads + " x " + headDim + "^2");
        }
    }

    private void validate(String where) {
        for (int l = 0; l < layers; l++) {
            for (int h = 0; h < kvHeads; h++) {
                float kc = kClip[index(l, h)], vc = vClip[index(l, h)];
                if (!(kc > 0f && kc <= 1f)) {
                    throw invalid(where + "K clip ratio of layer " + l + " head " + h + " is " + kc + ", must be in (0, 1]");
                }
                if (!(vc > 0f && vc <= 1f)) {
                    throw invalid(where + "V clip ratio of layer " + l + " head " + h + " is " + vc + ", must be in (0, 1]");
                }
                checkOrthogonal(where, "K", kRot[l], h, l);
                checkOrthogonal(where, "V", vRot[l], h, l);
            }
        }
    }

    private void checkOrthogonal(String where, String which, float[] m, int head, int layer) {
        double err = orthogonalityError(m, head * headDim * headDim, headDim);
        if (!(err <= ORTHOGONALITY_TOLERANCE)) {
            throw invalid(where + which + " rotation of layer " + layer + " head " + head
                    + " is not orthogonal: max |R R^T - I| = " + err + " (tolerance " + ORTHOGONALITY_TOLERANCE + ")");
        }
    }

    /** max |R R^T - I| of the d x d matrix at {@code m[off ..]}; NaN propagates as NaN. */
    public static double orthogonalityError(float[] m, int off, int d) {
        double worst = 0;
        for (int i = 0; i < d; i++) {
            for (int j = i; j < d; j++) {
                double s = 0;
                for (int x = 0; x < d; x++) {
                    s += (double) m[off + i * d + x] * m[off + j * d + x];
                }
                double e = Math.abs(s - (i == j ? 1 : 0));
                if (Double.isNaN(e)) {
                    return Double.NaN;
                }
                worst = Math.max(worst, e);
            }
        }
        return worst;
    }

    private float[] matrix(float[][] rot, int layer, int head) {
        int i = index(layer, head) - layer * kvHeads;
        int n = headDim * headDim;
        return Arrays.copyOfRange(rot[layer], i * n, (i + 1) * n);
    }

    private int index(int layer, int head) {
        checkLayer(layer);
        if (head < 0 || head >= kvHeads) {
            throw new IndexOutOfBoundsException("head " + head + " of " + kvHeads);
        }
        return layer * kvHeads + head;
    }

    private void checkLayer(int layer) {
        if (layer < 0 || layer >= layers) {
            throw new IndexOutOfBoundsException("layer " + layer + " of " + layers);
        }
    }

    private static Attn4jException bad(Path file, String what) {
        return invalid(file + ": " + what);
    }

    private static Attn4jException invalid(String message) {
        return new Attn4jException(Status.INVALID_ARGUMENT, message);
    }

    @Override
    public String toString() {
        return "Calibration[v" + VERSION + ", layers " + layers + ", kv_heads " + kvHeads + ", head_dim " + headDim
                + ", INT" + bits + " group " + groupSize + "]";
    }
}
