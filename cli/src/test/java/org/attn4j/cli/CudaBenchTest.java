package org.attn4j.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import org.attn4j.Attn4j;
import org.attn4j.Device;
import org.attn4j.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import picocli.CommandLine;

/**
 * {@code attn4j bench --device cuda:N} where it can be checked without a GPU: the one-line error,
 * device names, and the decode / prefill paths of {@link CudaBench} run on a CPU {@link Attn4j}
 * (same data layout, rotation and output check; no CUDA graph), plus the JSON handed to the
 * PyTorch peer scripts (the field names they read).
 */
class CudaBenchTest {
    @TempDir
    Path tmp;

    @Test
    void cudaWithoutAGpuFailsWithOneClearLine() throws Exception {
        assumeTrue(Attn4j.cudaDeviceCount() == 0, "a CUDA device is visible here");
        PrintStream err = System.err;
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        int rc;
        try {
            System.setErr(new PrintStream(buf, true, StandardCharsets.UTF_8));
            rc = new CommandLine(new Main()).execute("bench", "--device", "cuda:0", "--out", tmp.toString());
        } finally {
            System.setErr(err);
        }
        String text = buf.toString(StandardCharsets.UTF_8).strip();
        assertEquals(2, rc, text);
        assertEquals(1, text.lines().count(), "one line: " + text);
        assertTrue(text.startsWith("attn4j bench: cuda:0: no CUDA device visible (attn4j_device_count(CUDA)=0"), text);
        assertTrue(text.contains("--device cpu"), text);
        try (var files = Files.list(tmp)) {
            assertEquals(0, files.count(), "nothing written");
        }
    }

    @Test
    void deviceNames() {
        assertEquals(-1, CudaBench.cudaOrdinal("cpu"));
        assertEquals(0, CudaBench.cudaOrdinal("cuda"));
        assertEquals(0, CudaBench.cudaOrdinal("cuda:0"));
        assertEquals(3, CudaBench.cudaOrdinal(" CUDA:3 "));
        assertThrows(IllegalArgumentException.class, () -> CudaBench.cudaOrdinal("cuda:x"));
        assertThrows(IllegalArgumentException.class, () -> CudaBench.cudaOrdinal("cuda:-1"));
        if (Attn4j.cudaDeviceCount() == 0) {
            assertTrue(CudaBench.unavailable(1).startsWith("cuda:1: no CUDA device visible"));
        }
    }

    @Test
    void workloadsAndOnly() {
        BenchCommand o = new BenchCommand();
        assertEquals(List.of("decode 1x4k bf16", "decode 1x32k bf16", "decode 1x128k bf16", "decode 64x4k bf16",
                "prefill 16k causal bf16", "prefill 32k causal bf16"),
                new CudaBench(o).workloads().stream().map(CudaBench.Workload::name).toList());
        o.quick = true;
        o.only = java.util.regex.Pattern.compile("prefill");
        assertEquals(List.of("prefill 16k causal bf16"),
                new CudaBench(o).workloads().stream().map(CudaBench.Workload::name).toList());
    }

    /** The GPU code path on a CPU Attn4j: cache filling (with a partial last round), rotation, checks, peer JSON. */
    @Test
    void decodeAndPrefillPathsOnTheCpu() throws Exception {
        BenchCommand o = new BenchCommand();
        o.quick = true;
        CudaBench b = new CudaBench(o);
        b.decodeRotationBytes = 1;
        b.prefillRotationBytes = 1;
        Map<String, Object> d1;
        Map<String, Object> d2;
        Map<String, Object> p;
        try (Attn4j lib = Attn4j.open(Device.cpu(), 2); Stream stream = lib.newStream()) {
            lib.useStream(stream);
            // batch 64: 64 tokens per sequence per round, so 100 tokens take a full and a partial round
            d1 = b.decode(lib, stream, new CudaBench.Workload("decode 64x100", "decode", 64, 100), 0.0);
            d2 = b.decode(lib, stream, new CudaBench.Workload("decode 1x300", "decode", 1, 300), 0.0);
            // 2100 rows: more than one random tile of 2048 rows
            p = b.prefill(lib, stream, new CudaBench.Workload("prefill 2100", "prefill", 1, 2100), 0.0);
        }
        for (Map<String, Object> r : List.of(d1, d2, p)) {
            double err = CudaBench.num(r, "check_rel_err", null);
            assertTrue(err < 1e-2, r.get("name") + ": rel err " + err);
        }
        assertEquals(2, d1.get("rotation_layers"));
        assertEquals(64L * 100 * 8 * 128 * 2 * 2, ((Number) d1.get("kv_bytes")).longValue());
        assertFalse(d1.containsKey("time_us_graph"), "no CUDA graph on the CPU");
        assertTrue(CudaBench.num(d1, "time_us_stream", "median") > 0);
        assertEquals(2, p.get("rotation_sets"));
        assertEquals(4.0 * 2100 * 2100 * 128 * 32 / 2, CudaBench.num(p, "flops", null));

        // what torch_sdpa_decode.py reads from --attn4j (bench_cuda_decode --json's format)
        Map<String, Object> dec = CudaBench.decodePeerInput(List.of(d1, d2), "GPU", 4.0);
        for (String k : List.of("device", "copy_tb_s", "page_size", "results")) {
            assertTrue(dec.containsKey(k), k);
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> r0 = ((List<Map<String, Object>>) dec.get("results")).get(0);
        for (String k : List.of("batch", "seq_len", "median_us", "tb_s", "graph_us", "graph_tb_s")) {
            assertTrue(r0.containsKey(k), k);
        }
        assertEquals(64, r0.get("batch"));
        assertEquals(100, r0.get("seq_len"));
        // what torch_sdpa_prefill.py reads (bench_cuda_prefill --json's format)
        Map<String, Object> pre = CudaBench.prefillPeerInput(List.of(p), "GPU");
        assertTrue(pre.containsKey("device"));
        @SuppressWarnings("unchecked")
        Map<String, Object> q0 = ((List<Map<String, Object>>) pre.get("rows")).get(0);
        for (String k : List.of("name", "hq", "hkv", "d", "causal", "dtype", "lens", "flops", "ms_median", "tflops")) {
            assertTrue(q0.containsKey(k), k);
        }
        assertEquals(List.of(2100), q0.get("lens"));

        // the peers' results attach to our rows by shape / name
        CudaBench.mergeDecode(List.of(d1, d2), Map.of("peers", List.of(Map.of("batch", 1, "seq_len", 300,
                "cudnn", Map.of("graph_tb_s", 1.5), "flash", Map.of("graph_tb_s", 1.2)))));
        assertEquals(1.5, CudaBench.num(d2, "torch_cudnn", "graph_tb_s"));
        assertFalse(d1.containsKey("torch_cudnn"));
        CudaBench.mergePrefill(List.of(p), Map.of("rows", List.of(Map.of("attn4j", Map.of("name", "prefill 2100"),
                "torch", Map.of("flash", Map.of("tflops", 300.0), "cudnn", Map.of("error", "x"))))));
        assertEquals(300.0, CudaBench.num(p, "torch_flash", "tflops"));

        String summary = CudaBench.peerSummary(List.of(d1, d2, p));
        assertTrue(summary.contains("| decode 1x300 (CUDA graphs) |") && summary.contains("| prefill 2100 |")
                && !summary.contains("decode 64x100"), summary);
        String table = CudaBench.table(List.of(d1, d2, p), 4.0, "GPU", 0);
        assertTrue(table.contains("decode 64x100") && table.contains("prefill 2100"), table);
        assertFalse(table.contains("FAILED"), table);
        Path png = tmp.resolve("c.png");
        Charts.writeCuda(png, List.of(d1, d2, p), 4.0, "GPU");
        assertTrue(Files.size(png) > 1000);
    }
}
