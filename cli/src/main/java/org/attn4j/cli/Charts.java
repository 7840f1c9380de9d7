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
        if (charts.isEmpty()) {
            return;
        }
        String name = file.toString();
        String stem = name.endsWith(".png") ? name.substring(0, name.length() - 4) : name;
        BitmapEncoder.saveBitmap(charts, 1, charts.size(), stem, BitmapEncoder.BitmapFormat.PNG);
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
}
