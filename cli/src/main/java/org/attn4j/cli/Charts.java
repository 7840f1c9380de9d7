package org.attn4j.cli;

import java.awt.Color;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.CategoryChart;
import org.knowm.xchart.CategoryChartBuilder;
import org.knowm.xchart.style.Styler;

/** The bench chart: decode GB/s (attn4j, read bandwidth, llama.cpp) and prefill GFLOP/s. */
final class Charts {
    private Charts() {}

    private static final Color OURS = new Color(0x1f77b4);
    private static final Color ROOF = new Color(0x9e9e9e);
    private static final Color PEER = new Color(0xff7f0e);
    private static final Color PEER_F16 = new Color(0xd62728);

    static void write(Path file, List<Map<String, Object>> rows, double readBw, boolean withPeer) throws IOException {
        List<CategoryChart> charts = new ArrayList<>();
        List<Map<String, Object>> decode = rows.stream().filter(r -> "decode".equals(r.get("kind"))).toList();
        List<Map<String, Object>> prefill = rows.stream().filter(r -> "prefill".equals(r.get("kind"))).toList();
        if (!decode.isEmpty()) {
            CategoryChart c = chart("Paged decode, 32/8 heads, d=128, batch 1 (2 threads)", "KV GB/s");
            List<String> names = names(decode);
            c.addSeries("attn4j", names, values(decode, "kv_gbps", null)).setFillColor(OURS);
            c.addSeries("read bandwidth (same run)", names, decode.stream().map(r -> (Number) readBw).toList())
                    .setFillColor(ROOF);
            if (withPeer) {
                c.addSeries("llama.cpp, same KV type", names, values(decode, "llamacpp_same_kv", "kv_gbps"))
                        .setFillColor(PEER);
                c.addSeries("llama.cpp, f16 KV", names, values(decode, "llamacpp_f16", "kv_gbps")).setFillColor(PEER_F16);
            }
            charts.add(c);
        }
        if (!prefill.isEmpty()) {
            CategoryChart c = chart("Causal prefill, 512 new tokens, 32/8 heads, d=128", "GFLOP/s");
            List<String> names = names(prefill);
            c.addSeries("attn4j", names, values(prefill, "gflops", null)).setFillColor(OURS);
            if (withPeer) {
                c.addSeries("llama.cpp, same KV type", names, values(prefill, "llamacpp_same_kv", "gflops"))
                        .setFillColor(PEER);
                c.addSeries("llama.cpp, f16 KV", names, values(prefill, "llamacpp_f16", "gflops")).setFillColor(PEER_F16);
            }
            charts.add(c);
        }
        save(charts, file);
    }

    /**
     * The CUDA bench chart: decode TB/s (attn4j as a CUDA graph and enqueued back to back, PyTorch
     * cuDNN and flash as CUDA graphs when the peer ran, the D2D copy) and prefill TFLOP/s.
     */
    static void writeCuda(Path file, List<Map<String, Object>> rows, double copyTbs, String gpu) throws IOException {
        List<CategoryChart> charts = new ArrayList<>();
        List<Map<String, Object>> decode = rows.stream().filter(r -> "decode".equals(r.get("kind"))).toList();
        List<Map<String, Object>> prefill = rows.stream().filter(r -> "prefill".equals(r.get("kind"))).toList();
        boolean peer = rows.stream().anyMatch(r -> r.containsKey("torch_cudnn") || r.containsKey("torch_flash"));
        if (!decode.isEmpty()) {
            CategoryChart c = chart("Paged decode BF16, 32/8 heads, d=128, " + gpu, "K+V TB/s");
            List<String> names = names(decode);
            c.addSeries("attn4j (CUDA graph)", names, values(decode, "tb_s_graph", null)).setFillColor(OURS);
            c.addSeries("attn4j (runs back to back)", names, values(decode, "tb_s_stream", null))
                    .setFillColor(OURS.brighter());
            if (peer) {
                c.addSeries("PyTorch cuDNN (graph)", names, values(decode, "torch_cudnn", "graph_tb_s")).setFillColor(PEER);
                c.addSeries("PyTorch flash (graph)", names, values(decode, "torch_flash", "graph_tb_s"))
                        .setFillColor(PEER_F16);
            }
            c.addSeries("D2D copy (same run)", names, decode.stream().map(r -> (Number) copyTbs).toList())
                    .setFillColor(ROOF);
            c.getStyler().setDecimalPattern("#0.00");
            charts.add(c);
        }
        if (!prefill.isEmpty()) {
            CategoryChart c = chart("Causal prefill BF16, 32/8 heads, d=128, " + gpu, "TFLOP/s");
            List<String> names = names(prefill);
            c.addSeries("attn4j", names, values(prefill, "tflops", null)).setFillColor(OURS);
            if (peer) {
                c.addSeries("PyTorch flash", names, values(prefill, "torch_flash", "tflops")).setFillColor(PEER_F16);
                c.addSeries("PyTorch cuDNN", names, values(prefill, "torch_cudnn", "tflops")).setFillColor(PEER);
            }
            charts.add(c);
        }
        save(charts, file);
    }

    private static CategoryChart chart(String title, String yTitle) {
        CategoryChart c = new CategoryChartBuilder().width(820).height(560).title(title).yAxisTitle(yTitle).build();
        var s = c.getStyler();
        s.setLegendPosition(Styler.LegendPosition.OutsideS);
        s.setLegendLayout(Styler.LegendLayout.Horizontal);
        s.setChartBackgroundColor(Color.WHITE);
        s.setPlotGridLinesVisible(true);
        c.getStyler().setXAxisLabelRotation(20);
        c.getStyler().setLabelsVisible(true);
        c.getStyler().setLabelsFontColorAutomaticEnabled(false);
        c.getStyler().setLabelsFontColor(Color.DARK_GRAY);
        c.getStyler().setDecimalPattern("#0.0");
        return c;
    }

    private static List<String> names(List<Map<String, Object>> rows) {
        return rows.stream().map(r -> ((String) r.get("name")).replace(" causal", "")).toList();
    }

    /** {@code r[key]} or {@code r[key][sub]} per row; null (no bar) where missing. */
    @SuppressWarnings("unchecked")
    private static List<Number> values(List<Map<String, Object>> rows, String key, String sub) {
        List<Number> out = new ArrayList<>();
        for (Map<String, Object> r : rows) {
            Object o = r.get(key);
            if (o != null && sub != null) {
                o = ((Map<String, Object>) o).get(sub);
            }
            out.add(o instanceof Number n ? n : null);
        }
        return out;
    }

    /** Writes the charts side by side into one PNG ({@code file}; nothing when there are none). */
    private static void save(List<CategoryChart> charts, Path file) throws IOException {
        if (charts.isEmpty()) {
            return;
        }
        String name = file.toString();
        String stem = name.endsWith(".png") ? name.substring(0, name.length() - 4) : name;
        BitmapEncoder.saveBitmap(charts, 1, charts.size(), stem, BitmapEncoder.BitmapFormat.PNG);
    }
}
