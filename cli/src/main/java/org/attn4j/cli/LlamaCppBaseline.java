package org.attn4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * The llama.cpp (ggml CPU flash attention) results another harness writes to
 * benchmarks/results/llamacpp-cpu.json (see benchmarks/peers/llamacpp-cpu.sh): per case kind,
 * kv_type, kv_len, q_len, time_us, kv_gbps, gflops.
 */
record LlamaCppBaseline(Path file, String commit, String date, int threads, String cpuModel, List<Entry> cases) {

    record Entry(String kind, String kvType, int qHeads, int kvHeads, int headDim, long kvLen, long qLen,
            double timeUs, double kvGbps, double gflops) {}

    static LlamaCppBaseline load(Path file) throws IOException {
        JsonNode root = new ObjectMapper().readTree(Files.readString(file));
        List<Entry> cases = new ArrayList<>();
        for (JsonNode c : root.path("cases")) {
            if (c.has("supported") && !c.path("supported").asBoolean(true)) {
                continue;
            }
            cases.add(new Entry(c.path("kind").asText(), c.path("kv_type").asText().toLowerCase(Locale.ROOT),
                    c.path("q_heads").asInt(32), c.path("kv_heads").asInt(8), c.path("head_dim").asInt(128),
                    c.path("kv_len").asLong(), c.path("q_len").asLong(), c.path("time_us").asDouble(Double.NaN),
                    c.path("kv_gbps").asDouble(Double.NaN), c.path("gflops").asDouble(Double.NaN)));
        }
        return new LlamaCppBaseline(file, root.path("ggml_commit").asText(null), root.path("date").asText(null),
                root.path("threads").asInt(0), root.path("cpu_model").asText(""), cases);
    }

    /** The case with this shape and KV type ("f16", "bf16", ...), or null. */
    Entry find(String kind, String kvType, int qHeads, int kvHeads, int headDim, long kvLen, long qLen) {
        for (Entry e : cases) {
            if (e.kind().equals(kind) && e.kvType().equalsIgnoreCase(kvType) && e.qHeads() == qHeads
                    && e.kvHeads() == kvHeads && e.headDim() == headDim && e.kvLen() == kvLen && e.qLen() == qLen) {
                return e;
            }
        }
        return null;
    }
}
