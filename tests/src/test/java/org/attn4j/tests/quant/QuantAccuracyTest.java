package org.attn4j.tests.quant;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.attn4j.Attn4jException;
import org.attn4j.Status;
import org.attn4j.quant.QuantAccuracy;
import org.junit.jupiter.api.Test;

/** {@link QuantAccuracy#relativeError(double[], double[])}: the figure every accuracy table reports. */
class QuantAccuracyTest {
    @Test
    void zeroForEqualArraysAndTheNormRatioOtherwise() {
        double[] ref = {3, -4, 0};
        assertEquals(0.0, QuantAccuracy.relativeError(ref.clone(), ref));
        // ||(3, -4, 1) - (3, -4, 0)|| / ||(3, -4, 0)|| = 1 / 5
        assertEquals(0.2, QuantAccuracy.relativeError(new double[] {3, -4, 1}, ref), 1e-15);
        // relative to ref, not symmetric: ||0 - ref|| / ||ref|| = 1
        assertEquals(1.0, QuantAccuracy.relativeError(new double[3], ref), 1e-15);
    }

    @Test
    void rejectsNullAndMismatchedArrays() {
        for (double[][] args : new double[][][] {{null, {1}}, {{1}, null}, {{1, 2}, {1}}}) {
            Attn4jException e = assertThrows(Attn4jException.class, () -> QuantAccuracy.relativeError(args[0], args[1]));
            assertEquals(Status.INVALID_ARGUMENT, e.status());
            assertTrue(e.getMessage().contains("out, ref"), e.getMessage());
        }
    }
}
