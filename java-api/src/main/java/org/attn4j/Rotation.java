package org.attn4j;

/**
 * Rotation applied to K or V vectors before they are quantized (attn4j.h ATTN4J_ROTATION_*). A
 * vector is stored as {@code x R} with R orthogonal, so attention is unchanged: decode rotates the
 * query by R_k once per step and rotates the output back by R_v. Rotations spread outlier channels
 * over all channels, which is what makes 4- and 2-bit codes usable.
 */
public enum Rotation {
    /** Store vectors as they are. */
    NONE(0),
    /** Orthonormal Walsh-Hadamard transform (head_dim a power of 2); no calibration needed. */
    HADAMARD(1),
    /**
     * Per-layer, per-KV-head matrices from a {@link org.attn4j.quant.Calibration} (OSCAR style:
     * eigenvectors of an attention-aware covariance composed with Hadamard).
     */
    CALIBRATED(2);

    private final int code;

    Rotation(int code) {
        this.code = code;
    }

    /** The native code (ATTN4J_ROTATION_*; CALIBRATED is passed as ATTN4J_ROTATION_MATRIX). */
    public int code() {
        return code;
    }
}
