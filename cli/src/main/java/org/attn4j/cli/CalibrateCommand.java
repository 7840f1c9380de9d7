package org.attn4j.cli;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.Callable;

import org.attn4j.quant.Calibration;
import org.attn4j.quant.Calibrator;
import org.attn4j.quant.Npy;
import org.attn4j.quant.Npy.NpyArray;
import org.attn4j.quant.SyntheticKv;

import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Spec;

/**
 * {@code attn4j calibrate}: offline OSCAR-style calibration of a quantized KV cache from sample
 * Q/K/V ({@code .npy}) or from synthetic data; writes a calibration file (atomically) and prints the
 * per layer / KV head clip ratios and reconstruction errors (identity vs Hadamard vs calibrated).
 */
@Command(name = "calibrate", mixinStandardHelpOptions = true,
        description = {"Compute per-layer, per-KV-head rotations and clip ratios for a quantized KV cache.",
                "Inputs, one layer: --q [n_q, qo_heads, d], --k and --v [n_k, kv_heads, d];",
                "all layers: the same with a leading [layers, ...] dimension.",
                ".npy files of '<f4', '<f2' or '<f8' in C order (numpy.save, torch .numpy())."})
public final class CalibrateCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Option(names = "--q", paramLabel = "FILE", description = "Sample queries (.npy).")
    Path qFile;

    @Option(names = "--k", paramLabel = "FILE", description = "Sample keys (.npy).")
    Path kFile;

    @Option(names = "--v", paramLabel = "FILE", description = "Sample values (.npy).")
    Path vFile;

    @Option(names = "--layers", paramLabel = "N",
            description = "Expected layer count: rank-4 files must have N layers; rank-3 files are one layer (N = 1).")
    Integer layers;

    @Option(names = "--bits", defaultValue = "2", description = "Quantized format: 2, 4 or 8 bits (default ${DEFAULT-VALUE}).")
    int bits;

    @Option(names = "--group", defaultValue = "128", description = "Group size along head_dim: 32, 64, 128 (default ${DEFAULT-VALUE}).")
    int group;

    @Option(names = "--out", required = true, paramLabel = "FILE", description = "Calibration file to write (e.g. cal.a4jcal).")
    Path out;

    @Option(names = "--eval-tokens", defaultValue = "2048",
            description = "Tokens per head used for the clip search and errors (default ${DEFAULT-VALUE}).")
    int evalTokens;

    @Option(names = "--synthetic", description = "Generate the samples with SyntheticKv instead of reading files.")
    boolean synthetic;

    @Option(names = "--qo-heads", defaultValue = "32", description = "--synthetic: query heads (default ${DEFAULT-VALUE}).")
    int qoHeads;

    @Option(names = "--kv-heads", defaultValue = "8", description = "--synthetic: KV heads (default ${DEFAULT-VALUE}).")
    int kvHeads;

    @Option(names = "--head-dim", defaultValue = "128", description = "--synthetic: head_dim (default ${DEFAULT-VALUE}).")
    int headDim;

    @Option(names = "--tokens", defaultValue = "4096", description = "--synthetic: keys per layer (default ${DEFAULT-VALUE}).")
    int tokens;

    @Option(names = "--queries", defaultValue = "16", description = "--synthetic: sample queries per layer (default ${DEFAULT-VALUE}).")
    int queries;

    @Option(names = "--seed", defaultValue = "1", description = "--synthetic: seed (default ${DEFAULT-VALUE}).")
    long seed;

    @Override
    public Integer call() throws Exception {
        Calibrator calibrator = new Calibrator(bits, group).withMaxEvalTokens(evalTokens);
        List<Calibrator.LayerSamples> samples = synthetic ? syntheticSamples() : fileSamples();
        long t0 = System.nanoTime();
        Calibrator.Result result = calibrator.calibrate(samples);
        Calibration cal = result.calibration();
        cal.save(out);
        System.out.printf("calibrated %d layers x %d KV heads, head_dim %d, INT%d group %d in %.1f s -> %s%n",
                cal.layers(), cal.kvHeads(), cal.headDim(), bits, group, (System.nanoTime() - t0) / 1e9, out);
        System.out.println("relative weighted reconstruction error (K: query-weighted logit error, V: attention-weighted)");
        System.out.println("  identity and Hadamard at clip 1.00; Hadamard* at its best clip; calibrated at the chosen clip");
        System.out.printf("%5s %4s %6s %6s | %9s %9s %9s %9s | %9s %9s %9s %9s%n", "layer", "head", "K clip", "V clip",
                "K ident", "K Hadam", "K Hadam*", "K calib", "V ident", "V Hadam", "V Hadam*", "V calib");
        double[] sum = new double[8];
        for (Calibrator.HeadReport r : result.reports()) {
            System.out.printf("%5d %4d %6.2f %6.2f | %9.3e %9.3e %9.3e %9.3e | %9.3e %9.3e %9.3e %9.3e%n",
                    r.layer(), r.head(), r.kClip(), r.vClip(), r.kIdentity(), r.kHadamard(), r.kHadamardBestClip(),
                    r.kCalibrated(), r.vIdentity(), r.vHadamard(), r.vHadamardBestClip(), r.vCalibrated());
            double[] e = {r.kIdentity(), r.kHadamard(), r.kHadamardBestClip(), r.kCalibrated(),
                    r.vIdentity(), r.vHadamard(), r.vHadamardBestClip(), r.vCalibrated()};
            for (int i = 0; i < 8; i++) {
                sum[i] += e[i] / result.reports().size();
            }
        }
        System.out.printf("%5s %4s %6s %6s | %9.3e %9.3e %9.3e %9.3e | %9.3e %9.3e %9.3e %9.3e%n", "mean", "", "", "",
                sum[0], sum[1], sum[2], sum[3], sum[4], sum[5], sum[6], sum[7]);
        return 0;
    }

    private List<Calibrator.LayerSamples> syntheticSamples() {
        if (qFile != null || kFile != null || vFile != null) {
            throw new ParameterException(spec.commandLine(), "--synthetic and --q/--k/--v are exclusive");
        }
        int n = layers == null ? 1 : layers;
        if (n <= 0) {
            throw new ParameterException(spec.commandLine(), "--layers must be positive, got " + n);
        }
        List<Calibrator.LayerSamples> list = new ArrayList<>();
        for (int l = 0; l < n; l++) {
            SyntheticKv s = SyntheticKv.builder().qoHeads(qoHeads).kvHeads(kvHeads).headDim(headDim).tokens(tokens)
                    .seed(seed + l).build();
            list.add(new Calibrator.LayerSamples(s.sampleQueries(queries), queries, qoHeads, s.k(), s.v(), tokens,
                    kvHeads, headDim));
        }
        return list;
    }

    private List<Calibrator.LayerSamples> fileSamples() throws java.io.IOException {
        if (qFile == null || kFile == null || vFile == null) {
            throw new ParameterException(spec.commandLine(), "give --q, --k and --v (or --synthetic)");
        }
        NpyArray q = Npy.read(qFile), k = Npy.read(kFile), v = Npy.read(vFile);
        int rank = q.rank();
        if (rank != 3 && rank != 4) {
            throw new ParameterException(spec.commandLine(), "--q " + qFile + ": expected rank 3 [n_q, qo_heads, d] or 4 "
                    + "[layers, n_q, qo_heads, d], got shape " + Npy.shapeString(q.shape()));
        }
        int nl = rank == 4 ? q.dim(0) : 1;
        if (layers != null && layers != nl) {
            throw new ParameterException(spec.commandLine(), "--layers " + layers + " but --q " + qFile + " has "
                    + (rank == 4 ? nl + " layers (shape " + Npy.shapeString(q.shape()) + ")" : "one layer (rank 3)"));
        }
        int o = rank - 3; // offset of the per-layer dims
        int nq = q.dim(o), qo = q.dim(o + 1), d = q.dim(o + 2);
        long[] kvShape = rank == 4 ? new long[] {nl, -1, -1, d} : new long[] {-1, -1, d};
        Npy.requireShape(k, "--k " + kFile + " [" + (rank == 4 ? "layers, " : "") + "n_k, kv_heads, d]", kvShape);
        int nk = k.dim(o), kv = k.dim(o + 1);
        long[] exact = rank == 4 ? new long[] {nl, nk, kv, d} : new long[] {nk, kv, d};
        Npy.requireShape(v, "--v " + vFile + " (same shape as --k)", exact);
        if (kv == 0 || qo % kv != 0) {
            throw new ParameterException(spec.commandLine(), "--q has " + qo + " heads, not a multiple of the "
                    + kv + " KV heads of --k");
        }
        List<Calibrator.LayerSamples> list = new ArrayList<>();
        int qn = nq * qo * d, kn = nk * kv * d;
        for (int l = 0; l < nl; l++) {
            list.add(new Calibrator.LayerSamples(Arrays.copyOfRange(q.data(), l * qn, (l + 1) * qn), nq, qo,
                    Arrays.copyOfRange(k.data(), l * kn, (l + 1) * kn), Arrays.copyOfRange(v.data(), l * kn, (l + 1) * kn),
                    nk, kv, d));
        }
        return list;
    }
}
