package org.attn4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.attn4j.Attn4j;

/** Facts about this machine and the loaded native library, for `info` and result files. */
final class SystemInfo {
    private SystemInfo() {}

    static String cpuModel() {
        for (String line : readLines("/proc/cpuinfo")) {
            if (line.startsWith("model name")) {
                return line.substring(line.indexOf(':') + 1).strip();
            }
        }
        return System.getProperty("os.arch");
    }

    /** Size of the last-level cache in bytes (from sysfs), or -1 when unknown. */
    static long lastLevelCacheBytes() {
        long best = -1;
        Path dir = Path.of("/sys/devices/system/cpu/cpu0/cache");
        for (int i = 0; i < 8; i++) {
            Path idx = dir.resolve("index" + i);
            if (!Files.isDirectory(idx)) {
                break;
            }
            String size = readFirst(idx.resolve("size"));
            String type = readFirst(idx.resolve("type"));
            if (size == null || "Instruction".equals(type)) {
                continue;
            }
            long bytes = parseSize(size);
            if (bytes > best) {
                best = bytes;
            }
        }
        return best;
    }

    static long parseSize(String s) {
        s = s.strip().toUpperCase();
        long mult = 1;
        if (s.endsWith("K")) {
            mult = 1024;
        } else if (s.endsWith("M")) {
            mult = 1024 * 1024;
        } else if (s.endsWith("G")) {
            mult = 1024L * 1024 * 1024;
        }
        if (mult != 1) {
            s = s.substring(0, s.length() - 1);
        }
        try {
            return Long.parseLong(s.strip()) * mult;
        } catch (NumberFormatException e) {
            return -1;
        }
    }

    /** Paths of the attn4j native libraries mapped into this process (from /proc/self/maps). */
    static List<String> loadedLibraries() {
        return readLines("/proc/self/maps").stream()
                .map(l -> l.indexOf('/') >= 0 ? l.substring(l.indexOf('/')) : "")
                .filter(p -> p.contains("libattn4j") || p.contains("libdnnl"))
                .distinct()
                .sorted(java.util.Comparator.comparing((String p) -> !p.contains("libattn4j")))
                .toList();
    }

    static String jdk() {
        return System.getProperty("java.vm.vendor") + " " + System.getProperty("java.runtime.version");
    }

    /** key=value lines of the native build info as a map. */
    static Map<String, String> buildInfo() {
        Map<String, String> m = new LinkedHashMap<>();
        for (String line : Attn4j.buildInfo().split("\n")) {
            int eq = line.indexOf('=');
            if (eq > 0) {
                m.put(line.substring(0, eq).strip(), line.substring(eq + 1).strip());
            } else if (!line.isBlank()) {
                m.put(line.strip(), "");
            }
        }
        return m;
    }

    /** Machine description for result files. */
    static Map<String, Object> machine(int threads) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("cpu_model", cpuModel());
        m.put("cores", Runtime.getRuntime().availableProcessors());
        m.put("threads", threads);
        m.put("llc_bytes", lastLevelCacheBytes());
        m.put("jdk", jdk());
        m.put("os", System.getProperty("os.name") + " " + System.getProperty("os.version"));
        m.put("attn4j_abi", Attn4j.abiVersion());
        m.put("attn4j_cpu", Attn4j.cpuInfo());
        m.put("attn4j_build", buildInfo());
        m.put("loadavg", readFirst(Path.of("/proc/loadavg")));
        return m;
    }

    static String loadAvg() {
        String s = readFirst(Path.of("/proc/loadavg"));
        return s == null ? "?" : s;
    }

    private static List<String> readLines(String path) {
        try {
            return Files.readAllLines(Path.of(path));
        } catch (IOException | RuntimeException e) {
            return List.of();
        }
    }

    private static String readFirst(Path p) {
        try {
            List<String> l = Files.readAllLines(p);
            return l.isEmpty() ? null : l.get(0).strip();
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }
}
