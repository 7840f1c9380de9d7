package org.attn4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * The PyTorch SDPA peer of {@code attn4j bench --device cuda}: runs
 * {@code benchmarks/peers/torch_sdpa_decode.py} and {@code torch_sdpa_prefill.py} on the attn4j
 * rows (written in the native harnesses' JSON formats), so PyTorch is timed on the same shapes, on
 * the same GPU, in the same run. Missing python, torch or scripts: one line, and the bench goes on.
 */
final class TorchPeer {
    static final String DECODE_SCRIPT = "torch_sdpa_decode.py";
    static final String PREFILL_SCRIPT = "torch_sdpa_prefill.py";
    private static final long TIMEOUT_MINUTES = 30;

    /** A script's markdown table and JSON results. */
    record Result(String markdown, Map<String, Object> json) {}

    private final String python;
    private final Path scripts;
    private final int ordinal;
    private final boolean quick;
    private final String state; // why it is off, or the torch version when on
    private final boolean enabled;

    private TorchPeer(String python, Path scripts, int ordinal, boolean quick, boolean enabled, String state) {
        this.python = python;
        this.scripts = scripts;
        this.ordinal = ordinal;
        this.quick = quick;
        this.enabled = enabled;
        this.state = state;
    }

    /** From --peer auto|torch|none, --peer-scripts and --python; prints one line when the peer is left out. */
    static TorchPeer resolve(BenchCommand o, int ordinal) {
        String mode = o.peer.strip().toLowerCase(Locale.ROOT);
        Path dir = o.peerScripts != null ? o.peerScripts : Path.of("benchmarks", "peers");
        if (mode.equals("none")) {
            return new TorchPeer(o.python, dir, ordinal, o.quick, false, "off (--peer none)");
        }
        if (!mode.equals("auto") && !mode.equals("torch")) {
            throw new IllegalArgumentException("--peer " + o.peer + ": expected auto, torch or none");
        }
        String why = null;
        String version = null;
        if (!Files.isRegularFile(dir.resolve(DECODE_SCRIPT)) || !Files.isRegularFile(dir.resolve(PREFILL_SCRIPT))) {
            why = "no " + DECODE_SCRIPT + " / " + PREFILL_SCRIPT + " in " + dir.toAbsolutePath()
                    + " (run from the attn4j checkout or pass --peer-scripts DIR)";
        } else {
            String[] probe = probe(o.python, ordinal);
            if (probe[0] == null) {
                why = "`" + o.python + " -c \"import torch\"` failed (" + probe[1] + "); install PyTorch with CUDA "
                        + "or pass --python PATH";
            } else {
                version = probe[0];
            }
        }
        if (why != null) {
            System.err.println("note: PyTorch SDPA peer left out: " + why + ".");
            return new TorchPeer(o.python, dir, ordinal, o.quick, false, "left out: " + why);
        }
        return new TorchPeer(o.python, dir, ordinal, o.quick, true, "torch " + version + " via " + o.python + ", "
                + dir.resolve(DECODE_SCRIPT) + " and " + dir.resolve(PREFILL_SCRIPT));
    }

    /** {torch version and CUDA availability, null} or {null, why not}. */
    private static String[] probe(String python, int ordinal) {
        try {
            ProcessBuilder pb = new ProcessBuilder(python, "-c",
                    "import torch; print(torch.__version__, 'cuda' if torch.cuda.is_available() else 'NO-CUDA')")
                    .redirectErrorStream(true);
            environment(pb, ordinal);
            Process p = pb.start();
            String out = new String(p.getInputStream().readAllBytes()).strip();
            if (!p.waitFor(120, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                return new String[] {null, "timed out"};
            }
            List<String> lines = out.lines().toList();
            String last = lines.isEmpty() ? "" : lines.get(lines.size() - 1);
            if (p.exitValue() != 0) {
                return new String[] {null, last.isEmpty() ? "exit " + p.exitValue() : last};
            }
            if (last.endsWith("NO-CUDA")) {
                return new String[] {null, "torch " + last.split(" ")[0] + " sees no CUDA device"};
            }
            return new String[] {last.split(" ")[0], null};
        } catch (IOException e) {
            return new String[] {null, "cannot start " + python + ": " + e.getMessage()};
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return new String[] {null, "interrupted"};
        }
    }

    /** cuda:N of this process is the child's cuda:0 (CUDA_VISIBLE_DEVICES narrowed to it). */
    private static void environment(ProcessBuilder pb, int ordinal) {
        Map<String, String> env = pb.environment();
        String visible = env.get("CUDA_VISIBLE_DEVICES");
        if (visible == null || visible.isBlank()) {
            env.put("CUDA_VISIBLE_DEVICES", Integer.toString(ordinal));
        } else {
            String[] ids = visible.split(",");
            if (ordinal < ids.length) {
                env.put("CUDA_VISIBLE_DEVICES", ids[ordinal].strip());
            }
        }
        env.put("PYTHONUNBUFFERED", "1");
    }

    boolean enabled() {
        return enabled;
    }

    String describe() {
        return state;
    }

    /** torch_sdpa_decode.py on the shapes "b:L,..." of {@code attn4jJson}; outputs at {@code stem}.json/.md/.log. */
    Optional<Result> decode(Path attn4jJson, Path stem, String shapes) {
        return run(DECODE_SCRIPT, stem, List.of("--attn4j", attn4jJson.toString(), "--shapes", shapes, "--reps",
                quick ? "50" : "200"));
    }

    /** torch_sdpa_prefill.py on the rows of {@code attn4jJson}. */
    Optional<Result> prefill(Path attn4jJson, Path stem) {
        return run(PREFILL_SCRIPT, stem, List.of("--attn4j", attn4jJson.toString(), "--reps", quick ? "5" : "10"));
    }

    private Optional<Result> run(String script, Path stem, List<String> args) {
        Path json = Path.of(stem + ".json");
        Path md = Path.of(stem + ".md");
        Path log = Path.of(stem + ".log");
        List<String> cmd = new ArrayList<>(List.of(python, scripts.resolve(script).toString()));
        cmd.addAll(args);
        cmd.addAll(List.of("--out-json", json.toString(), "--out-md", md.toString()));
        try {
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile());
            environment(pb, ordinal);
            Process p = pb.start();
            if (!p.waitFor(TIMEOUT_MINUTES, TimeUnit.MINUTES)) {
                p.destroyForcibly();
                System.err.println("warning: " + script + " did not finish in " + TIMEOUT_MINUTES + " min; log: " + log);
                return Optional.empty();
            }
            if (p.exitValue() != 0 || !Files.isRegularFile(md)) {
                List<String> lines = Files.isRegularFile(log) ? Files.readAllLines(log) : List.of();
                System.err.println("warning: " + script + " failed (exit " + p.exitValue() + "); log: " + log
                        + (lines.isEmpty() ? "" : "; last line: " + lines.get(lines.size() - 1)));
                return Optional.empty();
            }
            Map<String, Object> parsed = Files.isRegularFile(json)
                    ? new ObjectMapper().readValue(json.toFile(), new TypeReference<Map<String, Object>>() {})
                    : null;
            return Optional.of(new Result(Files.readString(md), parsed));
        } catch (IOException e) {
            System.err.println("warning: " + script + ": " + e.getMessage());
            return Optional.empty();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return Optional.empty();
        }
    }
}
