package org.attn4j.internal;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;

import org.attn4j.Attn4jException;
import org.attn4j.Status;
import org.attn4j.bindings.Attn4jNative;

/**
 * Loads libattn4j once per JVM: from {@code -Dattn4j.library.path} (a directory holding libs.txt
 * and the libraries, or the library file itself) or else from the jar's
 * {@code META-INF/native/<os>-<arch>/}, extracted into a cache directory keyed by the library's
 * hash ({@code -Dattn4j.cache.dir}, default {@code ~/.cache/attn4j}). Then checks the ABI version.
 */
public final class NativeLibrary {
    public static final String PATH_PROPERTY = "attn4j.library.path";
    public static final String CACHE_PROPERTY = "attn4j.cache.dir";
    private static final String LIBRARY = "libattn4j.so";
    private static final String MANIFEST = "libs.txt";

    private static volatile boolean loaded;

    private NativeLibrary() {}

    /** Loads the library if needed; throws {@link Attn4jException} saying what was tried. */
    public static void ensureLoaded() {
        if (loaded) {
            return;
        }
        synchronized (NativeLibrary.class) {
            if (!loaded) {
                checkNativeAccess();
                load();
                checkAbi();
                loaded = true;
            }
        }
    }

    private static void checkNativeAccess() {
        Module module = NativeLibrary.class.getModule();
        if (!module.isNativeAccessEnabled()) {
            String flag = module.isNamed() ? "--enable-native-access=" + module.getName()
                    : "--enable-native-access=ALL-UNNAMED";
            throw new Attn4jException(Status.UNSUPPORTED, "attn4j calls native code through the FFM API, "
                    + "which this JVM has not allowed for " + (module.isNamed() ? "module " + module.getName()
                            : "the class path") + ": add " + flag + " to the java command line (or "
                    + "'Enable-Native-Access: ALL-UNNAMED' to an executable jar's manifest)");
        }
    }

    private static void load() {
        String override = System.getProperty(PATH_PROPERTY);
        List<String> tried = new ArrayList<>();
        try {
            if (override != null && !override.isBlank()) {
                Path p = Path.of(override);
                tried.add(PATH_PROPERTY + "=" + p);
                loadFrom(Files.isDirectory(p) ? p : p.getParent(), Files.isDirectory(p) ? null : p);
                return;
            }
            String platform = platform();
            String base = "/META-INF/native/" + platform + "/";
            tried.add("jar resource " + base + LIBRARY);
            List<String> names = readManifest(base);
            if (!names.contains(LIBRARY)) {
                names.add(LIBRARY);
            }
            Path dir = extract(base, names);
            tried.add("extracted to " + dir);
            loadFrom(dir, null);
        } catch (IOException | UnsatisfiedLinkError | RuntimeException e) {
            throw new Attn4jException(Status.DEVICE, "could not load the attn4j native library (tried: "
                    + String.join("; ", tried) + "): " + e.getMessage() + ". Set -D" + PATH_PROPERTY
                    + "=/path/to/dir-with-libattn4j.so (or the file) to use a library built elsewhere.", e);
        }
    }

    /** Loads the dependencies listed in dir/libs.txt in order, then the library itself. */
    private static void loadFrom(Path dir, Path library) throws IOException {
        Path manifest = dir.resolve(MANIFEST);
        if (library == null && Files.isRegularFile(manifest)) {
            for (String name : Files.readAllLines(manifest, StandardCharsets.UTF_8)) {
                if (!name.isBlank() && !name.strip().equals(LIBRARY)) {
                    System.load(dir.resolve(name.strip()).toAbsolutePath().toString());
                }
            }
        }
        System.load((library != null ? library : dir.resolve(LIBRARY)).toAbsolutePath().toString());
    }

    private static List<String> readManifest(String base) throws IOException {
        try (InputStream in = NativeLibrary.class.getResourceAsStream(base + MANIFEST)) {
            if (in == null) {
                throw new IOException("no native library for " + platform() + " in this jar ("
                        + base + MANIFEST + " not found); attn4j ships linux-x86_64");
            }
            List<String> names = new ArrayList<>();
            for (String line : new String(in.readAllBytes(), StandardCharsets.UTF_8).split("\n")) {
                if (!line.isBlank()) {
                    names.add(line.strip());
                }
            }
            return names;
        }
    }

    private static Path extract(String base, List<String> names) throws IOException {
        byte[] lib = readResource(base + LIBRARY);
        String key = hash(lib);
        Path root = Path.of(System.getProperty(CACHE_PROPERTY,
                System.getProperty("user.home") + "/.cache/attn4j"));
        Path dir = root.resolve(key);
        Files.createDirectories(dir);
        for (String name : names) {
            Path target = dir.resolve(name);
            if (Files.isRegularFile(target)) {
                continue;
            }
            byte[] bytes = name.equals(LIBRARY) ? lib : readResource(base + name);
            Path tmp = Files.createTempFile(dir, name, ".tmp");
            Files.write(tmp, bytes);
            try {
                Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
            }
        }
        Path manifest = dir.resolve(MANIFEST);
        if (!Files.isRegularFile(manifest)) {
            Path tmp = Files.createTempFile(dir, MANIFEST, ".tmp");
            Files.writeString(tmp, String.join("\n", names) + "\n");
            Files.move(tmp, manifest, StandardCopyOption.REPLACE_EXISTING);
        }
        return dir;
    }

    private static byte[] readResource(String name) throws IOException {
        try (InputStream in = NativeLibrary.class.getResourceAsStream(name)) {
            if (in == null) {
                throw new IOException("resource " + name + " missing from the jar");
            }
            return in.readAllBytes();
        }
    }

    private static String hash(byte[] bytes) {
        try {
            byte[] d = MessageDigest.getInstance("SHA-256").digest(bytes);
            return HexFormat.of().formatHex(d, 0, 12);
        } catch (NoSuchAlgorithmException e) {
            throw new UncheckedIOException(new IOException(e));
        }
    }

    private static String platform() {
        String os = System.getProperty("os.name").toLowerCase(Locale.ROOT);
        String arch = System.getProperty("os.arch").toLowerCase(Locale.ROOT);
        String o = os.contains("linux") ? "linux" : os.contains("mac") ? "macos" : os.contains("win") ? "windows" : os;
        String a = arch.equals("amd64") || arch.equals("x86_64") ? "x86_64" : arch.equals("aarch64") ? "aarch64" : arch;
        return o + "-" + a;
    }

    private static void checkAbi() {
        int loadedAbi = Attn4jNative.attn4j_abi_version();
        int expected = Attn4jNative.ATTN4J_ABI_VERSION();
        if (loadedAbi != expected) {
            throw new Attn4jException(Status.UNSUPPORTED, "attn4j native library ABI version " + loadedAbi
                    + " does not match the Java bindings' version " + expected
                    + ": use the native library built with this jar");
        }
    }
}
