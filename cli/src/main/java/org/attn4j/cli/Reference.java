package org.attn4j.cli;

/**
 * Float64 reference attention for one sequence: q [nQ][qHeads][d], k and v [nKv][kvHeads][d]
 * (row-major, flattened), GQA by {@code qHeads / kvHeads}, optional causal mask aligned
 * bottom-right (query i of nQ sees keys 0 .. i + nKv - nQ), like FlashInfer and attn4j.
 */
final class Reference {
    private Reference() {}

    /** Output [nQ][qHeads][d] and natural-log log-sum-exp [nQ][qHeads] of the scaled scores. */
    record Result(double[] out, double[] lse) {}

    static Result attention(double[] q, int nQ, double[] k, double[] v, int nKv, int qHeads, int kvHeads, int d,
            double scale, boolean causal) {
        int group = qHeads / kvHeads;
        double[] out = new double[nQ * qHeads * d];
        double[] lse = new double[nQ * qHeads];
        double[] s = new double[nKv];
        for (int i = 0; i < nQ; i++) {
            int visible = causal ? Math.min(nKv, i + nKv - nQ + 1) : nKv;
            for (int h = 0; h < qHeads; h++) {
                int kh = h / group;
                int qo = (i * qHeads + h) * d;
                double max = Double.NEGATIVE_INFINITY;
                for (int j = 0; j < visible; j++) {
                    int ko = (j * kvHeads + kh) * d;
                    double dot = 0;
                    for (int x = 0; x < d; x++) {
                        dot += q[qo + x] * k[ko + x];
                    }
                    s[j] = dot * scale;
                    max = Math.max(max, s[j]);
                }
                if (visible <= 0) {
                    lse[i * qHeads + h] = Double.NEGATIVE_INFINITY;
                    continue;
                }
                double sum = 0;
                for (int j = 0; j < visible; j++) {
                    double p = Math.exp(s[j] - max);
                    sum += p;
                    int vo = (j * kvHeads + kh) * d;
                    for (int x = 0; x < d; x++) {
                        out[qo + x] += p * v[vo + x];
                    }
                }
                for (int x = 0; x < d; x++) {
                    out[qo + x] /= sum;
                }
                lse[i * qHeads + h] = max + Math.log(sum);
            }
        }
        return new Result(out, lse);
    }

    /** ||got - ref|| / ||ref||; NaN when {@code got} holds a non-finite value (an unwritten poisoned element). */
    static double relError(float[] got, double[] ref) {
        if (got.length != ref.length) {
            throw new IllegalArgumentException(got.length + " vs " + ref.length + " values");
        }
        double num = 0;
        double den = 0;
        for (int i = 0; i < got.length; i++) {
            if (!Float.isFinite(got[i])) {
                return Double.NaN;
            }
            double diff = got[i] - ref[i];
            num += diff * diff;
            den += ref[i] * ref[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }
}
