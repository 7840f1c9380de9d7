package org.attn4j.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.attn4j.Attn4jException;
import org.attn4j.Status;

/**
 * Reads and writes NumPy {@code .npy} files (format versions 1.0, 2.0, 3.0) of little-endian
 * float32 / float16 / float64 in C order, as {@code numpy.save} and {@code torch.Tensor.numpy()}
 * produce them. Everything is read into a {@code float[]}.
 *
 * <p>Errors: a file that is not a valid, supported {@code .npy} raises {@link Attn4jException} with
 * {@link Status#INVALID_ARGUMENT} and a message starting with the file name; failures of the file
 * system itself (missing file, permissions) are the {@link IOException}s of {@code java.nio}.
 */
public final class Npy {
    private static final byte[] MAGIC = {(byte) 0x93, 'N', 'U', 'M', 'P', 'Y'};
    private static final int ALIGN = 64;

    private Npy() {}

    /**
     * A C-order array. {@code shape} is empty for a scalar. The arrays are not copied: treat them as
     * read-only once shared.
     */
    public record NpyArray(long[] shape, float[] data) {
        public NpyArray {
            if (Npy.count(shape) != data.length) {
                throw invalid("shape " + Npy.shapeString(shape) + " holds " + Npy.count(shape)
                        + " values, data has " + data.length);
            }
        }

        public int rank() {
            return shape.length;
        }

        /** Dimension {@code i} as an int (every dimension of a readable file fits). */
        public int dim(int i) {
            return Math.toIntExact(shape[i]);
        }

        @Override
        public String toString() {
            return "NpyArray" + shapeString(shape);
        }
    }

    /** Reads a {@code .npy} file; f2 and f8 are converted to float. */
    public static NpyArray read(Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            long size = ch.size();
            ByteBuffer pre = ByteBuffer.allocate(12).order(ByteOrder.LITTLE_ENDIAN);
            readFully(ch, pre, 0);
            pre.flip();
            if (pre.remaining() < MAGIC.length || !Arrays.equals(Arrays.copyOf(pre.array(), MAGIC.length), MAGIC)) {
                throw bad(file, "not a .npy file (missing the \\x93NUMPY magic)");
            }
            if (pre.remaining() < 10) {
                throw bad(file, "truncated .npy header (" + size + " bytes)");
            }
            int major = pre.get(6) & 0xff, minor = pre.get(7) & 0xff;
            long headerLen;
            int prefix;
            if (major == 1) {
                headerLen = pre.getShort(8) & 0xffff;
                prefix = 10;
            } else if (major == 2 || major == 3) {
                if (pre.remaining() < 12) {
                    throw bad(file, "truncated .npy header (" + size + " bytes)");
                }
                headerLen = pre.getInt(8) & 0xffffffffL;
                prefix = 12;
            } else {
                throw bad(file, "unsupported .npy format version " + major + "." + minor
                        + " (reads 1.0, 2.0, 3.0)");
            }
            long dataStart = prefix + headerLen;
            if (dataStart > size) {
                throw bad(file, "truncated .npy header: it declares " + headerLen + " header bytes, the file has "
                        + (size - prefix) + " after the prefix");
            }
            if (headerLen > 1 << 20) {
                throw bad(file, "implausible .npy header length " + headerLen);
            }
            ByteBuffer hb = ByteBuffer.allocate((int) headerLen);
            readFully(ch, hb, prefix);
            String header = new String(hb.array(), major == 3 ? StandardCharsets.UTF_8 : StandardCharsets.ISO_8859_1);
            Header h = parseHeader(file, header);
            long count = count(h.shape);
            if (count > Integer.MAX_VALUE - 8) {
                throw bad(file, "shape " + shapeString(h.shape) + " has " + count + " elements, more than a Java array holds");
            }
            long expectBytes = count * h.itemSize;
            long have = size - dataStart;
            if (have < expectBytes) {
                throw bad(file, "truncated data: shape " + shapeString(h.shape) + " of " + h.descr + " needs "
                        + expectBytes + " bytes, the file has " + have);
            }
            if (have > expectBytes) {
                throw bad(file, "has " + (have - expectBytes) + " bytes after the data of shape "
                        + shapeString(h.shape) + " (" + h.descr + "): not a file written by numpy.save");
            }
            float[] data = new float[(int) count];
            readData(ch, dataStart, h.itemSize, data);
            return new NpyArray(h.shape, data);
        }
    }

    /**
     * Writes {@code data} as a '<f4' C-order {@code .npy} (version 1.0, or 2.0 for huge headers;
     * the header is byte-identical to {@code numpy.save}'s), atomically: a temporary file in the same directory, then a move over {@code file}.
     */
    public static void write(Path file, long[] shape, float[] data) throws IOException {
        for (long d : shape) {
            if (d < 0) {
                throw invalid(file + ": negative dimension in shape " + shapeString(shape));
            }
        }
        if (count(shape) != data.length) {
            throw invalid(file + ": shape " + shapeString(shape) + " holds " + count(shape)
                    + " values, data has " + data.length);
        }
        StringBuilder dict = new StringBuilder("{'descr': '<f4', 'fortran_order': False, 'shape': (");
        for (int i = 0; i < shape.length; i++) {
            dict.append(shape[i]).append(shape.length == 1 ? "," : i + 1 < shape.length ? ", " : "");
        }
        dict.append("), }");
        if (shape.length > 0) { // numpy.save's spare room for growing axis 0 in place: same bytes as NumPy
            dict.append(" ".repeat(Math.max(0, 21 - Long.toString(shape[0]).length())));
        }
        int major = dict.length() + 1 + 10 > 65535 ? 2 : 1;
        int prefix = major == 1 ? 10 : 12;
        int total = (prefix + dict.length() + 1 + ALIGN - 1) / ALIGN * ALIGN;
        while (dict.length() + 1 + prefix < total) {
            dict.append(' ');
        }
        dict.append('\n');
        ByteBuffer head = ByteBuffer.allocate(total).order(ByteOrder.LITTLE_ENDIAN);
        head.put(MAGIC).put((byte) major).put((byte) 0);
        if (major == 1) {
            head.putShort((short) dict.length());
        } else {
            head.putInt(dict.length());
        }
        head.put(dict.toString().getBytes(StandardCharsets.ISO_8859_1)).flip();
        atomicWrite(file, ch -> {
            writeFully(ch, head);
            ByteBuffer buf = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
            for (float f : data) {
                if (!buf.hasRemaining()) {
                    buf.flip();
                    writeFully(ch, buf);
                    buf.clear();
                }
                buf.putFloat(f);
            }
            buf.flip();
            writeFully(ch, buf);
        });
    }

    /**
     * Checks the rank and dimensions of {@code a}; {@code -1} in {@code dims} matches any size.
     * The message names {@code name} (e.g. the file or option) and both shapes.
     */
    public static void requireShape(NpyArray a, String name, long... dims) {
        boolean ok = a.shape().length == dims.length;
        for (int i = 0; ok && i < dims.length; i++) {
            ok = dims[i] == -1 || dims[i] == a.shape()[i];
        }
        if (!ok) {
            StringBuilder want = new StringBuilder("(");
            for (int i = 0; i < dims.length; i++) {
                want.append(dims[i] == -1 ? "*" : Long.toString(dims[i]))
                        .append(dims.length == 1 ? "," : i + 1 < dims.length ? ", " : "");
            }
            throw invalid(name + ": expected shape " + want + "), got " + shapeString(a.shape()));
        }
    }

    /** "(2, 3)", "(5,)", "()": NumPy's spelling. */
    public static String shapeString(long[] shape) {
        StringBuilder s = new StringBuilder("(");
        for (int i = 0; i < shape.length; i++) {
            s.append(shape[i]).append(shape.length == 1 ? "," : i + 1 < shape.length ? ", " : "");
        }
        return s.append(')').toString();
    }

    static long count(long[] shape) {
        long n = 1;
        for (long d : shape) {
            n = d < 0 ? -1 : Math.multiplyHigh(n, d) != 0 ? Long.MAX_VALUE : n * d;
            if (n < 0 || n == Long.MAX_VALUE) {
                return n < 0 ? -1 : Long.MAX_VALUE;
            }
        }
        return n;
    }

    private record Header(String descr, int itemSize, long[] shape) {}

    private static Header parseHeader(Path file, String header) {
        Map<String, Object> dict;
        try {
            dict = new DictParser(header).parse();
        } catch (IllegalArgumentException e) {
            throw bad(file, "malformed .npy header (" + e.getMessage() + "): " + header.strip());
        }
        for (String key : List.of("descr", "fortran_order", "shape")) {
            if (!dict.containsKey(key)) {
                throw bad(file, ".npy header lacks '" + key + "': " + header.strip());
            }
        }
        if (!(dict.get("descr") instanceof String descr)) {
            throw bad(file, "'descr' is not a simple dtype string (structured arrays are not supported)");
        }
        if (!(dict.get("fortran_order") instanceof Boolean fortran)) {
            throw bad(file, "'fortran_order' must be True or False");
        }
        if (fortran) {
            throw bad(file, "Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)");
        }
        if (!(dict.get("shape") instanceof long[] shape)) {
            throw bad(file, "'shape' must be a tuple of integers");
        }
        int itemSize = switch (descr) {
            case "<f4" -> 4;
            case "<f2" -> 2;
            case "<f8" -> 8;
            default -> throw bad(file, unsupportedDtype(descr));
        };
        return new Header(descr, itemSize, shape);
    }

    private static String unsupportedDtype(String descr) {
        if (descr.length() >= 2 && descr.charAt(0) == '>') {
            return "big-endian dtype '" + descr + "' is not supported; save little-endian (arr.astype('<"
                    + descr.substring(1) + "'))";
        }
        String hint = descr.endsWith("u2") || descr.endsWith("i2")
                ? " (16-bit integers are not read as bfloat16: convert to float32 first)" : "";
        return "unsupported dtype '" + descr + "'" + hint + "; expected '<f4', '<f2' or '<f8'";
    }

    /** Parses the Python dict literal of a header: string keys; strings, True/False, int tuples. */
    private static final class DictParser {
        private final String s;
        private int p;

        DictParser(String s) {
            this.s = s;
        }

        Map<String, Object> parse() {
            Map<String, Object> m = new LinkedHashMap<>();
            expect('{');
            while (true) {
                skip();
                if (peek() == '}') {
                    p++;
                    break;
                }
                String key = string();
                expect(':');
                m.put(key, value());
                skip();
                if (peek() == ',') {
                    p++;
                } else if (peek() != '}') {
                    throw new IllegalArgumentException("expected ',' or '}' at offset " + p);
                }
            }
            skip();
            if (p != s.length()) {
                throw new IllegalArgumentException("unexpected text after '}' at offset " + p);
            }
            return m;
        }

        private Object value() {
            skip();
            char c = peek();
            if (c == '\'' || c == '"') {
                return string();
            }
            if (c == '(') {
                p++;
                List<Long> dims = new ArrayList<>();
                while (true) {
                    skip();
                    if (peek() == ')') {
                        p++;
                        break;
                    }
                    dims.add(integer());
                    skip();
                    if (peek() == ',') {
                        p++;
                    } else if (peek() != ')') {
                        throw new IllegalArgumentException("expected ',' or ')' in the shape at offset " + p);
                    }
                }
                return dims.stream().mapToLong(Long::longValue).toArray();
            }
            for (String word : List.of("True", "False")) {
                if (s.startsWith(word, p)) {
                    p += word.length();
                    return word.equals("True");
                }
            }
            // anything else (lists of fields, numbers): keep as text, rejected by the caller
            int start = p;
            while (p < s.length() && ",}".indexOf(s.charAt(p)) < 0) {
                p++;
            }
            return new StringBuilder(s.substring(start, p));
        }

        private long integer() {
            int start = p;
            while (p < s.length() && Character.isDigit(s.charAt(p))) {
                p++;
            }
            if (p < s.length() && s.charAt(p) == 'L') { // Python 2 long
                p++;
            }
            String digits = s.substring(start, p).replace("L", "");
            if (digits.isEmpty()) {
                throw new IllegalArgumentException("expected a non-negative integer dimension at offset " + start);
            }
            try {
                return Long.parseLong(digits);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("dimension " + digits + " out of range");
            }
        }

        private String string() {
            skip();
            char q = peek();
            if (q != '\'' && q != '"') {
                throw new IllegalArgumentException("expected a quoted string at offset " + p);
            }
            int end = s.indexOf(q, p + 1);
            if (end < 0) {
                throw new IllegalArgumentException("unterminated string at offset " + p);
            }
            String r = s.substring(p + 1, end);
            p = end + 1;
            return r;
        }

        private void expect(char c) {
            skip();
            if (peek() != c) {
                throw new IllegalArgumentException("expected '" + c + "' at offset " + p);
            }
            p++;
        }

        private char peek() {
            if (p >= s.length()) {
                throw new IllegalArgumentException("header ends early");
            }
            return s.charAt(p);
        }

        private void skip() {
            while (p < s.length() && Character.isWhitespace(s.charAt(p))) {
                p++;
            }
        }
    }

    private static void readData(FileChannel ch, long pos, int itemSize, float[] out) throws IOException {
        ByteBuffer buf = ByteBuffer.allocateDirect(1 << 20).order(ByteOrder.LITTLE_ENDIAN);
        int i = 0;
        while (i < out.length) {
            buf.clear();
            buf.limit((int) Math.min(buf.capacity(), (long) (out.length - i) * itemSize));
            int want = buf.limit();
            int got = readFully(ch, buf, pos);
            if (got < want) {
                throw new IOException("file shrank while being read: " + pos);
            }
            pos += got;
            buf.flip();
            switch (itemSize) {
                case 4 -> {
                    while (buf.remaining() >= 4) {
                        out[i++] = buf.getFloat();
                    }
                }
                case 2 -> {
                    while (buf.remaining() >= 2) {
                        out[i++] = Float.float16ToFloat(buf.getShort());
                    }
                }
                default -> {
                    while (buf.remaining() >= 8) {
                        out[i++] = (float) buf.getDouble();
                    }
                }
            }
        }
    }

    /** Reads until {@code buf} is full or the file ends; returns the bytes read. */
    private static int readFully(FileChannel ch, ByteBuffer buf, long pos) throws IOException {
        int total = 0;
        while (buf.hasRemaining()) {
            int n = ch.read(buf, pos + total);
            if (n < 0) {
                break;
            }
            total += n;
        }
        return total;
    }

    /** Writes the body of a file. */
    @FunctionalInterface
    interface Body {
        void write(FileChannel ch) throws IOException;
    }

    /**
     * Writes {@code file} through a temporary file in the same directory, forced to disk, then moved
     * over {@code file} atomically: a reader sees the old file or the complete new one, and a failure
     * leaves {@code file} untouched and no temporary behind.
     */
    static void atomicWrite(Path file, Body body) throws IOException {
        Path abs = file.toAbsolutePath();
        Path dir = abs.getParent();
        Path tmp = Files.createTempFile(dir, "." + abs.getFileName() + ".", ".tmp");
        boolean done = false;
        try {
            keepPermissions(abs, tmp);
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
                body.write(ch);
                ch.force(true);
            }
            try {
                Files.move(tmp, abs, java.nio.file.StandardCopyOption.ATOMIC_MOVE,
                        java.nio.file.StandardCopyOption.REPLACE_EXISTING);
            } catch (java.nio.file.AtomicMoveNotSupportedException e) {
                Files.move(tmp, abs, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
            }
            done = true;
        } finally {
            if (!done) {
                Files.deleteIfExists(tmp);
            }
        }
    }

    /** createTempFile makes the file private (0600): give it the replaced file's mode, or rw-r--r--. */
    private static void keepPermissions(Path target, Path tmp) throws IOException {
        if (!Files.getFileStore(tmp).supportsFileAttributeView(java.nio.file.attribute.PosixFileAttributeView.class)) {
            return;
        }
        Files.setPosixFilePermissions(tmp, Files.isRegularFile(target)
                ? Files.getPosixFilePermissions(target)
                : java.nio.file.attribute.PosixFilePermissions.fromString("rw-r--r--"));
    }

    static void writeFully(FileChannel ch, ByteBuffer buf) throws IOException {
        while (buf.hasRemaining()) {
            ch.write(buf);
        }
    }

    private static Attn4jException bad(Path file, String what) {
        return invalid(file + ": " + what);
    }

    private static Attn4jException invalid(String message) {
        return new Attn4jException(Status.INVALID_ARGUMENT, message);
    }
}
