package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.HashMap;
import java.util.Map;

import org.attn4j.Attn4j;
import org.attn4j.Device;
import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_attention_desc;
import org.attn4j.bindings.attn4j_context_options;
import org.attn4j.bindings.attn4j_page_table;
import org.attn4j.bindings.attn4j_paged_kv;
import org.attn4j.bindings.attn4j_tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** The loaded library: versions, info strings, devices; and the bindings against the library's ABI. */
class LibraryTest {

    static Map<String, String> keyValues(String text) {
        Map<String, String> m = new HashMap<>();
        for (String line : text.split("\n")) {
            if (line.isBlank()) {
                continue;
            }
            int eq = line.indexOf('=');
            assertTrue(eq > 0, () -> "not key=value: \"" + line + "\" in\n" + text);
            m.put(line.substring(0, eq).strip(), line.substring(eq + 1).strip());
        }
        return m;
    }

    @Test
    void abiVersionMatchesBindings() {
        assertEquals(Attn4jNative.ATTN4J_ABI_VERSION(), Attn4j.abiVersion());
        assertEquals(Attn4jNative.ATTN4J_ABI_VERSION(), Attn4jNative.attn4j_abi_version());
    }

    @Test
    void buildInfoHasExpectedKeys() {
        String info = Attn4j.buildInfo();
        assertFalse(info.isBlank(), "buildInfo is empty");
        Map<String, String> kv = keyValues(info);
        for (String key : new String[] {"version", "compiler"}) {
            assertTrue(kv.containsKey(key) && !kv.get(key).isEmpty(), () -> "buildInfo lacks " + key + ":\n" + info);
        }
        assertTrue(info.contains("avx2") || info.contains("isa"), () -> "buildInfo names no ISA path:\n" + info);
        assertTrue(info.toLowerCase().contains("cuda"), () -> "buildInfo says nothing about CUDA:\n" + info);
    }

    @Test
    void cpuInfoNamesIsaAndFeatures() {
        String info = Attn4j.cpuInfo();
        assertTrue(info.matches("isa=(avx512|avx2|scalar) features=\\S*.*"), () -> "cpuInfo: " + info);
        String isa = System.getenv("ATTN4J_ISA");
        if (isa != null && !isa.isBlank()) {
            assertTrue(info.startsWith("isa=" + isa + " ") || isa.equals("avx512"),
                    () -> "ATTN4J_ISA=" + isa + " not honoured: " + info);
        }
    }

    @Test
    void devicesAndContexts() {
        assertTrue(Attn4j.cudaDeviceCount() >= 0);
        try (Attn4j one = Attn4j.open(Device.cpu(), 1); Attn4j all = Attn4j.open()) {
            assertEquals(1, one.threads());
            assertEquals(Runtime.getRuntime().availableProcessors(), all.threads());
            assertEquals(Device.cpu(), one.device());
            assertTrue(one.toString().contains("cpu"));
            double gbs = all.measureReadBandwidth(8L << 20, 2);
            assertTrue(gbs > 0.1 && gbs < 10_000, "read bandwidth " + gbs);
        }
        Attn4j l = Attn4j.open(Device.cpu(), 2);
        l.close();
        l.close(); // idempotent
        assertTrue(l.toString().contains("closed"));
        assertEquals("cuda:1", Device.cuda(1).toString());
    }

    /** The bindings' struct layouts equal the loaded library's sizeof, per struct. */
    @ParameterizedTest
    @ValueSource(strings = {"attn4j_tensor", "attn4j_context_options", "attn4j_paged_kv", "attn4j_page_table",
            "attn4j_attention_desc"})
    void structSizesMatchBindings(String name) {
        Attn4j.abiVersion(); // loads the library
        long java = switch (name) {
            case "attn4j_tensor" -> attn4j_tensor.sizeof();
            case "attn4j_context_options" -> attn4j_context_options.sizeof();
            case "attn4j_paged_kv" -> attn4j_paged_kv.sizeof();
            case "attn4j_page_table" -> attn4j_page_table.sizeof();
            case "attn4j_attention_desc" -> attn4j_attention_desc.sizeof();
            default -> throw new AssertionError(name);
        };
        try (Arena arena = Arena.ofConfined()) {
            long nat = Attn4jNative.attn4j_struct_size(arena.allocateFrom(name));
            assertTrue(nat > 0, name + " unknown to the library");
            assertEquals(nat, java, name + ": library sizeof vs bindings layout");
        }
    }

    @Test
    void bindingsMisc() {
        Attn4j.abiVersion();
        try (Arena arena = Arena.ofConfined()) {
            assertEquals(0, Attn4jNative.attn4j_struct_size(arena.allocateFrom("attn4j_nope")));
            assertEquals("ATTN4J_ERR_INVALID_ARGUMENT",
                    Attn4jNative.attn4j_status_name(Attn4jNative.ATTN4J_ERR_INVALID_ARGUMENT()).reinterpret(256)
                            .getString(0));
            assertEquals("ATTN4J_OK", Attn4jNative.attn4j_status_name(0).reinterpret(256).getString(0));
            MemorySegment n = arena.allocate(ValueLayout.JAVA_INT);
            assertEquals(0, Attn4jNative.attn4j_device_count(Attn4jNative.ATTN4J_DEVICE_CPU(), n));
            assertEquals(1, n.get(ValueLayout.JAVA_INT, 0));
            // a bad call sets the thread's last error; destroy accepts NULL
            assertEquals(0, Attn4jNative.attn4j_plan_destroy(MemorySegment.NULL));
            assertEquals(0, Attn4jNative.attn4j_context_destroy(MemorySegment.NULL));
            int st = Attn4jNative.attn4j_context_create(MemorySegment.NULL, arena.allocate(ValueLayout.ADDRESS));
            assertEquals(Attn4jNative.ATTN4J_ERR_INVALID_ARGUMENT(), st);
            String err = Attn4jNative.attn4j_last_error().reinterpret(4096).getString(0);
            assertFalse(err.isBlank(), "last error after a failed call");
        }
    }
}
