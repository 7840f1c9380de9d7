package org.attn4j.testing;

/**
 * Float64 reference attention, the ground truth every kernel is judged against.
 *
 * <p>Layouts are flat, row-major, matching the kernels: queries/outputs {@code [rows][heads][dim]},
 * keys/values {@code [tokens][kvHeads][dim]}, log-sum-exp {@code [rows][heads]}. Query head h reads
 * KV head {@code h / (heads / kvHeads)} (GQA/MQA). Causal masks are aligned bottom-right: query i of
 * nQ sees keys {@code 0 .. i + nKv - nQ}. LSE is the natural log of
 * {@code sum_j exp(scale * q.k_j)}. Inputs are floats already rounded to the dtype the kernel
 * reads, so the reference sees exactly the kernel's inputs.
 */
public final class ReferenceAttention {
    private ReferenceAttention() {}

    /** Output {@code [rows][heads][dim]} and LSE {@code [rows][heads]}, in double. */
    public record Result(double[] out, double[] lse) {}

    /**
     * One sequence: {@code nq} queries against {@code nkv} keys/values.
     */
    public static Result attend(float[] q, int qOff, float[] k, float[] v, int kvOff, int nq, int nkv, int heads,
            int kvHeads, int dim, double scale, boolean causal) {
        if (heads % kvHeads != 0) {
            throw new IllegalArgumentException("heads " + heads + " not a multiple of kvHeads " + kvHeads);
        }
        if (causal && nkv < nq) {
            throw new IllegalArgumentException("causal needs nkv >= nq");
        }
        int group = heads / kvHeads;
        double[] out = new double[nq * heads * dim];
        double[] lse = new double[nq * heads];
        double[] logits = new double[nkv];
        double[] acc = new double[dim];
        for (int i = 0; i < nq; i++) {
            int visible = causal ? i + nkv - nq + 1 : nkv;
            for (int h = 0; h < heads; h++) {
                int kh = h / group;
                int qBase = qOff + (i * heads + h) * dim;
                double max = Double.NEGATIVE_INFINITY;
                for (int j = 0; j < visible; j++) {
                    int kBase = kvOff + (j * kvHeads + kh) * dim;
                    double dot = 0;
                    for (int d = 0; d < dim; d++) {
                        dot += (double) q[qBase + d] * (double) k[kBase + d];
                    }
                    logits[j] = dot * scale;
                    max = Math.max(max, logits[j]);
                }
                double sum = 0;
                java.util.Arrays.fill(acc, 0);
                for (int j = 0; j < visible; j++) {
                    double p = Math.exp(logits[j] - max);
                    sum += p;
                    int vBase = kvOff + (j * kvHeads + kh) * dim;
                    for (int d = 0; d < dim; d++) {
                        acc[d] += p * v[vBase + d];
                    }
                }
                int oBase = (i * heads + h) * dim;
                for (int d = 0; d < dim; d++) {
                    out[oBase + d] = acc[d] / sum;
                }
                lse[i * heads + h] = max + Math.log(sum);
            }
        }
        return new Result(out, lse);
    }

    /** A ragged batch (prefill): sequence s has query rows qoIndptr[s].. and KV rows kvIndptr[s]... */
    public static Result prefill(float[] q, int[] qoIndptr, float[] k, float[] v, int[] kvIndptr, int heads,
            int kvHeads, int dim, double scale, boolean causal) {
        int batch = qoIndptr.length - 1;
        int rows = qoIndptr[batch];
        double[] out = new double[rows * heads * dim];
        double[] lse = new double[rows * heads];
        for (int s = 0; s < batch; s++) {
            int nq = qoIndptr[s + 1] - qoIndptr[s];
            int nkv = kvIndptr[s + 1] - kvIndptr[s];
            if (nq == 0) {
                continue;
            }
            Result r = attend(q, qoIndptr[s] * heads * dim, k, v, kvIndptr[s] * kvHeads * dim, nq, nkv, heads,
                    kvHeads, dim, scale, causal);
            System.arraycopy(r.out, 0, out, qoIndptr[s] * heads * dim, r.out.length);
            System.arraycopy(r.lse, 0, lse, qoIndptr[s] * heads, r.lse.length);
        }
        return new Result(out, lse);
    }

    /**
     * Decode over a page table: {@code kPages}/{@code vPages} mirror a cache layer in HND layout
     * {@code [numPages][kvHeads][pageSize][dim]}; q is {@code [batch][heads][dim]}.
     */
    public static Result decodePaged(float[] q, float[] kPages, float[] vPages, int[] indptr, int[] indices,
            int[] lastPageLen, int pageSize, int heads, int kvHeads, int dim, double scale) {
        int batch = lastPageLen.length;
        double[] out = new double[batch * heads * dim];
        double[] lse = new double[batch * heads];
        for (int b = 0; b < batch; b++) {
            int pages = indptr[b + 1] - indptr[b];
            int len = (pages - 1) * pageSize + lastPageLen[b];
            float[] k = new float[len * kvHeads * dim];
            float[] v = new float[len * kvHeads * dim];
            for (int t = 0; t < len; t++) {
                int page = indices[indptr[b] + t / pageSize];
                int slot = t % pageSize;
                for (int h = 0; h < kvHeads; h++) {
                    int src = ((page * kvHeads + h) * pageSize + slot) * dim;
                    System.arraycopy(kPages, src, k, (t * kvHeads + h) * dim, dim);
                    System.arraycopy(vPages, src, v, (t * kvHeads + h) * dim, dim);
                }
            }
            Result r = attend(q, b * heads * dim, k, v, 0, 1, len, heads, kvHeads, dim, scale, false);
            System.arraycopy(r.out, 0, out, b * heads * dim, r.out.length);
            System.arraycopy(r.lse, 0, lse, b * heads, r.lse.length);
        }
        return new Result(out, lse);
    }

    /**
     * Merge of partial states: {@code v [n][states][heads][dim]}, {@code s [n][states][heads]}
     * (-inf = empty part) into output {@code [n][heads][dim]} and LSE {@code [n][heads]}.
     */
    public static Result merge(float[] v, float[] s, int n, int states, int heads, int dim) {
        double[] out = new double[n * heads * dim];
        double[] lse = new double[n * heads];
        for (int i = 0; i < n; i++) {
            for (int h = 0; h < heads; h++) {
                double max = Double.NEGATIVE_INFINITY;
                for (int st = 0; st < states; st++) {
                    max = Math.max(max, s[(i * states + st) * heads + h]);
                }
                double sum = 0;
                for (int st = 0; st < states; st++) {
                    double sv = s[(i * states + st) * heads + h];
                    if (sv == Double.NEGATIVE_INFINITY) {
                        continue;
                    }
                    double w = Math.exp(sv - max);
                    sum += w;
                    int vb = ((i * states + st) * heads + h) * dim;
                    for (int d = 0; d < dim; d++) {
                        out[(i * heads + h) * dim + d] += w * v[vb + d];
                    }
                }
                for (int d = 0; d < dim; d++) {
                    out[(i * heads + h) * dim + d] /= sum;
                }
                lse[i * heads + h] = max + Math.log(sum);
            }
        }
        return new Result(out, lse);
    }
}
