package org.attn4j.quant;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.stream.IntStream;

import org.attn4j.Attn4jException;
import org.attn4j.Status;

/**
 * Offline calibration of the quantized KV cache (OSCAR-style): per layer and KV head, a rotation
 * {@code R = U P H} and clipping ratios, from sample queries, keys and values.
 *
 * <ul>
 *   <li>Token weights {@code w_t = (1/n + a_t) / 2}, {@code a_t} the mean softmax attention that token
 *       {@code t} gets from the group's sample queries (all keys visible, decode-style). Half uniform so
 *       that the few sink tokens, which serving keeps in float anyway, do not decide alone.</li>
 *   <li>Keys: the error that matters is the logit error {@code q . e}, whose mean square is
 *       {@code e^T C_Q e} with {@code C_Q = E[q q^T]} over the group's queries (OSCAR's key target).
 *       The eigenbasis {@code U} is that of {@code C_Q / tr C_Q + C_K / tr C_K}, {@code C_K = sum w_t k k^T}:
 *       directions that queries read <em>and</em> that carry key energy (outlier channels, means).</li>
 *   <li>Values: the output is {@code sum_t p_t v_t}, so {@code U} is the eigenbasis of the
 *       attention-weighted second moment {@code C_V = sum w_t v v^T}.</li>
 *   <li>{@code P} sends eigenvector {@code i} (by decreasing eigenvalue) to Hadamard row
 *       {@code bitreverse(i)}; {@code H} is the orthonormal Sylvester Hadamard. The first
 *       {@code head_dim / group_size} eigen-directions then land on rows that are constant within every
 *       quantization group, which the per-group zero point absorbs without error; every other
 *       direction is spread evenly over all channels (no outliers left).</li>
 *   <li>Clip ratios: grid search (default 1.00, 0.98, ..., 0.80) minimizing the weighted
 *       reconstruction error of the rotated, quantized and decoded vectors: for keys
 *       {@code sum w_t e_t^T C_Q e_t / sum w_t k_t^T C_Q k_t}, for values {@code sum w_t |e_t|^2 / sum w_t |v_t|^2}.</li>
 * </ul>
 * head_dim must be a power of 2 (Hadamard). Errors are {@link Attn4jException} (INVALID_ARGUMENT).
 */
public final class Calibrator {
    private static final float[] DEFAULT_CLIP_GRID = grid(1.0f, 0.80f, 0.02f);

    /** The default clip grid: 1.00 down to 0.80 in steps of 0.02 (contains OSCAR's K 0.96, V 0.92). */
    public static float[] defaultClipGrid() {
        return DEFAULT_CLIP_GRID.clone();
    }

    private final int bits;
    private final int groupSize;
    private final float[] clipGrid;
    private final int maxEvalTokens;

    /** Calibrates for {@code bits} (2, 4, 8) and {@code groupSize} (32, 64, 128). */
    public Calibrator(int bits, int groupSize) {
        this(bits, groupSize, DEFAULT_CLIP_GRID, 2048);
    }

    private Calibrator(int bits, int groupSize, float[] clipGrid, int maxEvalTokens) {
        if (bits != 2 && bits != 4 && bits != 8) {
            throw invalid("bits must be 2, 4 or 8, got " + bits);
        }
        if (groupSize != 32 && groupSize != 64 && groupSize != 128) {
            throw invalid("group size must be 32, 64 or 128, got " + groupSize);
        }
        if (clipGrid.length == 0) {
            throw invalid("clip grid is empty");
        }
        for (float c : clipGrid) {
            if (!(c > 0f && c <= 1f)) {
                throw invalid("clip grid values must be in (0, 1], got " + c);
            }
        }
        if (maxEvalTokens <= 0) {
            throw invalid("maxEvalTokens must be positive, got " + maxEvalTokens);
        }
        this.bits = bits;
        this.groupSize = groupSize;
        this.clipGrid = clipGrid.clone();
        this.maxEvalTokens = maxEvalTokens;
    }

    /** The same calibrator with another clip grid (values in (0, 1]). */
    public Calibrator withClipGrid(float... grid) {
        return new Calibrator(bits, groupSize, grid, maxEvalTokens);
    }

    /** The same calibrator evaluating errors on at most {@code n} tokens per head (evenly strided). */
    public Calibrator withMaxEvalTokens(int n) {
        return new Calibrator(bits, groupSize, clipGrid, n);
    }

    /**
     * One layer's samples: {@code q [numQueries][qoHeads][headDim]}, {@code k} and
     * {@code v [numTokens][kvHeads][headDim]}, row-major. Query head {@code h} reads KV head
     * {@code h / (qoHeads / kvHeads)}.
     */
    public record LayerSamples(float[] q, int numQueries, int qoHeads, float[] k, float[] v, int numTokens,
                               int kvHeads, int headDim) {
        public LayerSamples {
            if (numQueries <= 0 || numTokens <= 0 || qoHeads <= 0 || kvHeads <= 0 || headDim <= 0) {
                throw invalid("samples: numQueries " + numQueries + ", numTokens " + numTokens + ", qoHeads " + qoHeads
                        + ", kvHeads " + kvHeads + ", headDim " + headDim + " must all be positive");
            }
            if (qoHeads % kvHeads != 0) {
                throw invalid("samples: qoHeads " + qoHeads + " is not a multiple of kvHeads " + kvHeads);
            }
            if (q.length != (long) numQueries * qoHeads * headDim) {
                throw invalid("samples: q has " + q.length + " floats, expected [" + numQueries + "][" + qoHeads + "]["
                        + headDim + "]");
            }
            long kv = (long) numTokens * kvHeads * headDim;
            if (k.length != kv || v.length != kv) {
                throw invalid("samples: k has " + k.length + ", v " + v.length + " floats, expected [" + numTokens + "]["
                        + kvHeads + "][" + headDim + "]");
            }
        }
    }

    /**
     * Relative weighted reconstruction errors of one KV head (see the class comment) with the
     * identity and Hadamard rotations at clip 1, Hadamard at its own best clip of the grid, and the
     * calibrated rotation at the chosen clip.
     */
    public record HeadReport(int layer, int head, float kClip, float vClip,
                             double kIdentity, double kHadamard, double kHadamardBestClip, double kCalibrated,
                             double vIdentity, double vHadamard, double vHadamardBestClip, double vCalibrated) {}

    /** The calibration and a report per layer and KV head (layer-major). */
    public record Result(Calibration calibration, List<HeadReport> reports) {}

    /** Calibrates every layer (the layers must agree on heads and head_dim). Heads run in parallel. */
    public Result calibrate(List<LayerSamples> layers) {
        if (layers.isEmpty()) {
            throw invalid("samples: no layers");
        }
        LayerSamples first = layers.get(0);
        int kvHeads = first.kvHeads(), d = first.headDim();
        QuantReference.requirePowerOfTwo(d);
        if (d % groupSize != 0) {
            throw invalid("group size " + groupSize + " does not divide head_dim " + d);
        }
        for (int l = 0; l < layers.size(); l++) {
            LayerSamples s = layers.get(l);
            if (s.kvHeads() != kvHeads || s.headDim() != d || s.qoHeads() != first.qoHeads()) {
                throw invalid("samples of layer " + l + ": qoHeads/kvHeads/headDim " + s.qoHeads() + "/" + s.kvHeads() + "/"
                        + s.headDim() + " differ from layer 0's " + first.qoHeads() + "/" + kvHeads + "/" + d);
            }
        }
        int n = layers.size() * kvHeads;
        HeadResult[] res = new HeadResult[n];
        IntStream.range(0, n).parallel().forEach(i -> res[i] = calibrateHead(layers.get(i / kvHeads), i / kvHeads, i % kvHeads));
        float[][] kRot = new float[layers.size()][kvHeads * d * d], vRot = new float[layers.size()][kvHeads * d * d];
        float[] kClip = new float[n], vClip = new float[n];
        List<HeadReport> reports = new ArrayList<>(n);
        for (int i = 0; i < n; i++) {
            System.arraycopy(res[i].kRot, 0, kRot[i / kvHeads], (i % kvHeads) * d * d, d * d);
            System.arraycopy(res[i].vRot, 0, vRot[i / kvHeads], (i % kvHeads) * d * d, d * d);
            kClip[i] = res[i].report.kClip();
            vClip[i] = res[i].report.vClip();
            reports.add(res[i].report);
        }
        Calibration cal = Calibration.of(layers.size(), kvHeads, d, bits, groupSize, kRot, vRot, kClip, vClip);
        return new Result(cal, List.copyOf(reports));
    }

    private record HeadResult(float[] kRot, float[] vRot, HeadReport report) {}

    private HeadResult calibrateHead(LayerSamples s, int layer, int head) {
        int d = s.headDim(), n = s.numTokens(), kvH = s.kvHeads(), group = s.qoHeads() / kvH;
        int m = s.numQueries() * group;
        float[] q = new float[m * d], k = new float[n * d], v = new float[n * d];
        for (int i = 0; i < s.numQueries(); i++) {
            for (int g = 0; g < group; g++) {
                System.arraycopy(s.q(), (i * s.qoHeads() + head * group + g) * d, q, (i * group + g) * d, d);
            }
        }
        for (int t = 0; t < n; t++) {
            System.arraycopy(s.k(), (t * kvH + head) * d, k, t * d, d);
            System.arraycopy(s.v(), (t * kvH + head) * d, v, t * d, d);
        }
        requireFinite(q, "q", layer);
        requireFinite(k, "k", layer);
        requireFinite(v, "v", layer);
        double[] w = tokenWeights(q, m, k, n, d);
        double[] cq = secondMoment(q, null, m, d);
        double[] ck = secondMoment(k, w, n, d);
        double[] cv = secondMoment(v, w, n, d);
        double tq = trace(cq, d), tk = trace(ck, d);
        double[] ak = new double[d * d];
        for (int i = 0; i < d * d; i++) {
            ak[i] = (tq > 0 ? cq[i] / tq : 0) + (tk > 0 ? ck[i] / tk : 0);
        }
        float[] rk = rotation(eigen(ak, d).vectors(), d);
        float[] rv = rotation(eigen(cv, d).vectors(), d);
        float[] had = hadamardMatrix(d);
        float[] id = new float[d * d];
        for (int i = 0; i < d; i++) {
            id[i * d + i] = 1f;
        }

        // evaluation subset: evenly strided tokens
        int stride = Math.max(1, (n + maxEvalTokens - 1) / maxEvalTokens);
        int ne = (n + stride - 1) / stride;
        float[] ke = new float[ne * d], ve = new float[ne * d];
        double[] we = new double[ne];
        for (int i = 0; i < ne; i++) {
            System.arraycopy(k, i * stride * d, ke, i * d, d);
            System.arraycopy(v, i * stride * d, ve, i * d, d);
            we[i] = w[i * stride];
        }
        Eval kid = new Eval(ke, we, id, cq, d), khad = new Eval(ke, we, had, cq, d), kcal = new Eval(ke, we, rk, cq, d);
        Eval vid = new Eval(ve, we, id, null, d), vhad = new Eval(ve, we, had, null, d), vcal = new Eval(ve, we, rv, null, d);
        float kClip = bestClip(kcal), vClip = bestClip(vcal);
        HeadReport r = new HeadReport(layer, head, kClip, vClip,
                kid.error(1f), khad.error(1f), khad.error(bestClip(khad)), kcal.error(kClip),
                vid.error(1f), vhad.error(1f), vhad.error(bestClip(vhad)), vcal.error(vClip));
        return new HeadResult(rk, rv, r);
    }

    private float bestClip(Eval e) {
        float best = clipGrid[0];
        double bestErr = Double.POSITIVE_INFINITY;
        for (float c : clipGrid) {
            double err = e.error(c);
            if (err < bestErr) {
                bestErr = err;
                best = c;
            }
        }
        return best;
    }

    /** Weighted relative reconstruction error of vectors under one rotation, for any clip. */
    private final class Eval {
        private final float[] x; // rotated vectors
        private final double[] w;
        private final double[] metric; // R^T C R in rotated space, or null for |e|^2
        private final int d, n;
        private final double energy;

        Eval(float[] vectors, double[] w, float[] r, double[] c, int d) {
            this.d = d;
            this.n = w.length;
            this.w = w;
            this.x = new float[vectors.length];
            for (int t = 0; t < n; t++) {
                for (int j = 0; j < d; j++) {
                    double s = 0;
                    for (int i = 0; i < d; i++) {
                        s += (double) vectors[t * d + i] * r[i * d + j];
                    }
                    x[t * d + j] = (float) s;
                }
            }
            if (c == null) {
                metric = null;
            } else {
                double[] cr = new double[d * d]; // C R
                for (int i = 0; i < d; i++) {
                    for (int j = 0; j < d; j++) {
                        double s = 0;
                        for (int a = 0; a < d; a++) {
                            s += c[i * d + a] * r[a * d + j];
                        }
                        cr[i * d + j] = s;
                    }
                }
                metric = new double[d * d]; // R^T C R
                for (int i = 0; i < d; i++) {
                    for (int j = 0; j < d; j++) {
                        double s = 0;
                        for (int a = 0; a < d; a++) {
                            s += r[a * d + i] * cr[a * d + j];
                        }
                        metric[i * d + j] = s;
                    }
                }
            }
            double e = 0;
            double[] tmp = new double[d];
            for (int t = 0; t < n; t++) {
                for (int j = 0; j < d; j++) {
                    tmp[j] = x[t * d + j];
                }
                e += w[t] * quadratic(tmp);
            }
            energy = e;
        }

        double error(float clip) {
            float[] out = new float[d];
            float[] row = new float[d];
            double[] err = new double[d];
            double sum = 0;
            for (int t = 0; t < n; t++) {
                System.arraycopy(x, t * d, row, 0, d);
                QuantReference.roundTrip(row, 0, d, bits, groupSize, clip, out);
                for (int j = 0; j < d; j++) {
                    err[j] = (double) row[j] - out[j];
                }
                sum += w[t] * quadratic(err);
            }
            return energy > 0 ? sum / energy : sum;
        }

        private double quadratic(double[] e) {
            double s = 0;
            if (metric == null) {
                for (double a : e) {
                    s += a * a;
                }
                return s;
            }
            for (int i = 0; i < d; i++) {
                double r = 0;
                for (int j = 0; j < d; j++) {
                    r += metric[i * d + j] * e[j];
                }
                s += e[i] * r;
            }
            return s;
        }
    }

    /** w_t = (1/n + mean softmax attention of t) / 2; sums to 1. */
    static double[] tokenWeights(float[] q, int m, float[] k, int n, int d) {
        double[] a = new double[n];
        double[] s = new double[n];
        double scale = 1 / Math.sqrt(d);
        for (int i = 0; i < m; i++) {
            double max = Double.NEGATIVE_INFINITY;
            for (int t = 0; t < n; t++) {
                double dot = 0;
                for (int j = 0; j < d; j++) {
                    dot += (double) q[i * d + j] * k[t * d + j];
                }
                s[t] = dot * scale;
                max = Math.max(max, s[t]);
            }
            double z = 0;
            for (int t = 0; t < n; t++) {
                s[t] = Math.exp(s[t] - max);
                z += s[t];
            }
            for (int t = 0; t < n; t++) {
                a[t] += s[t] / z / m;
            }
        }
        for (int t = 0; t < n; t++) {
            a[t] = 0.5 / n + 0.5 * a[t];
        }
        return a;
    }

    /** sum_t w_t x_t x_t^T (w null: the mean). */
    static double[] secondMoment(float[] x, double[] w, int n, int d) {
        double[] c = new double[d * d];
        for (int t = 0; t < n; t++) {
            double wt = w == null ? 1.0 / n : w[t];
            for (int i = 0; i < d; i++) {
                double xi = wt * x[t * d + i];
                for (int j = i; j < d; j++) {
                    c[i * d + j] += xi * x[t * d + j];
                }
            }
        }
        for (int i = 0; i < d; i++) {
            for (int j = 0; j < i; j++) {
                c[i * d + j] = c[j * d + i];
            }
        }
        return c;
    }

    private static double trace(double[] c, int d) {
        double s = 0;
        for (int i = 0; i < d; i++) {
            s += c[i * d + i];
        }
        return s;
    }

    /** Eigen-decomposition of a symmetric matrix: eigenvalues descending, eigenvector i = column i of {@code vectors} (row-major n x n). */
    public record Eigen(double[] values, double[] vectors) {}

    /**
     * Cyclic Jacobi eigenvalue method (double precision) for a symmetric {@code n x n} row-major
     * matrix. Eigenvectors are signed so that their largest component is positive (deterministic).
     */
    public static Eigen eigen(double[] symmetric, int n) {
        if (symmetric.length != n * n) {
            throw invalid("eigen: matrix has " + symmetric.length + " entries, expected " + n + "x" + n);
        }
        double[] a = symmetric.clone();
        double norm = 0;
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                if (!Double.isFinite(a[i * n + j])) {
                    throw invalid("eigen: matrix has a non-finite entry at (" + i + ", " + j + ")");
                }
                if (Math.abs(a[i * n + j] - a[j * n + i]) > 1e-9 * (Math.abs(a[i * n + j]) + Math.abs(a[j * n + i]) + 1e-300)) {
                    throw invalid("eigen: matrix is not symmetric at (" + i + ", " + j + ")");
                }
                norm += a[i * n + j] * a[i * n + j];
            }
        }
        double[] v = new double[n * n];
        for (int i = 0; i < n; i++) {
            v[i * n + i] = 1;
        }
        for (int sweep = 0; sweep < 100; sweep++) {
            double off = 0;
            for (int p = 0; p < n; p++) {
                for (int q = p + 1; q < n; q++) {
                    off += a[p * n + q] * a[p * n + q];
                }
            }
            if (off <= 1e-30 * norm || off == 0) {
                break;
            }
            for (int p = 0; p < n; p++) {
                for (int q = p + 1; q < n; q++) {
                    double apq = a[p * n + q];
                    if (Math.abs(apq) <= 1e-300) {
                        continue;
                    }
                    double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                    double t = Math.signum(theta) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
                    if (theta == 0) {
                        t = 1;
                    }
                    double c = 1 / Math.sqrt(t * t + 1), s = t * c;
                    for (int k = 0; k < n; k++) { // columns p, q of A
                        double akp = a[k * n + p], akq = a[k * n + q];
                        a[k * n + p] = c * akp - s * akq;
                        a[k * n + q] = s * akp + c * akq;
                    }
                    for (int k = 0; k < n; k++) { // rows p, q
                        double apk = a[p * n + k], aqk = a[q * n + k];
                        a[p * n + k] = c * apk - s * aqk;
                        a[q * n + k] = s * apk + c * aqk;
                    }
                    a[p * n + q] = a[q * n + p] = 0;
                    for (int k = 0; k < n; k++) {
                        double vkp = v[k * n + p], vkq = v[k * n + q];
                        v[k * n + p] = c * vkp - s * vkq;
                        v[k * n + q] = s * vkp + c * vkq;
                    }
                }
            }
        }
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) {
            order[i] = i;
        }
        double[] diag = new double[n];
        for (int i = 0; i < n; i++) {
            diag[i] = a[i * n + i];
        }
        Arrays.sort(order, (x, y) -> Double.compare(diag[y], diag[x]));
        double[] values = new double[n], vectors = new double[n * n];
        for (int c = 0; c < n; c++) {
            int src = order[c];
            values[c] = diag[src];
            int arg = 0;
            for (int r = 0; r < n; r++) {
                if (Math.abs(v[r * n + src]) > Math.abs(v[arg * n + src])) {
                    arg = r;
                }
            }
            double sign = v[arg * n + src] < 0 ? -1 : 1;
            for (int r = 0; r < n; r++) {
                vectors[r * n + c] = sign * v[r * n + src];
            }
        }
        return new Eigen(values, vectors);
    }

    /**
     * {@code R = U P H}: eigenvector {@code i} (column {@code i} of {@code eigenvectors}, by decreasing
     * eigenvalue) mapped to Hadamard row {@code bitreverse(i)}. Orthogonal; checked.
     */
    public static float[] rotation(double[] eigenvectors, int d) {
        QuantReference.requirePowerOfTwo(d);
        int logd = Integer.numberOfTrailingZeros(d);
        float[] r = new float[d * d];
        double[] y = new double[d];
        for (int a = 0; a < d; a++) {
            Arrays.fill(y, 0);
            for (int i = 0; i < d; i++) {
                int br = logd == 0 ? 0 : Integer.reverse(i) >>> (32 - logd);
                y[br] = eigenvectors[a * d + i];
            }
            QuantReference.hadamard(y);
            for (int j = 0; j < d; j++) {
                r[a * d + j] = (float) y[j];
            }
        }
        double err = Calibration.orthogonalityError(r, 0, d);
        if (!(err <= 1e-4)) {
            throw new Attn4jException(Status.INTERNAL, "calibrated rotation is not orthogonal (max |R R^T - I| = " + err
                    + "): eigenvectors did not converge");
        }
        return r;
    }

    /** The orthonormal Sylvester Hadamard matrix H / sqrt(d), row-major. */
    public static float[] hadamardMatrix(int d) {
        float[] h = new float[d * d];
        for (int i = 0; i < d; i++) {
            h[i * d + i] = 1f;
            QuantReference.hadamard(h, i * d, d);
        }
        return h;
    }

    private static void requireFinite(float[] x, String name, int layer) {
        for (int i = 0; i < x.length; i++) {
            if (!Float.isFinite(x[i])) {
                throw invalid("samples of layer " + layer + ": " + name + " has a non-finite value (" + x[i] + ")");
            }
        }
    }

    private static float[] grid(float from, float to, float step) {
        int n = Math.round((from - to) / step) + 1;
        float[] g = new float[n];
        for (int i = 0; i < n; i++) {
            g[i] = Math.round((from - i * step) * 100f) / 100f;
        }
        return g;
    }

    private static Attn4jException invalid(String message) {
        return new Attn4jException(Status.INVALID_ARGUMENT, message);
    }
}
