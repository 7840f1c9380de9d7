package org.attn4j.benchmarks;

import java.util.Locale;

import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.Device;
import org.attn4j.KvFormat;
import org.attn4j.Rotation;
import org.attn4j.quant.QuantAccuracy;
import org.attn4j.quant.SyntheticKv;

/**
 * How many probe queries the salient-token choice of a {@code TieredKvCache} needs: decode-output
 * error against fp64 ({@link QuantAccuracy#relativeErrorSalient}, the CPU kernels) of the synthetic
 * layer of {@code attn4j verify --quant} (8192 tokens, 32 q / 8 kv heads, d 128), G128 F32 meta,
 * Hadamard, BF16 64 sinks + 256 recent, 5% salient tokens chosen by the queries of the last P tokens
 * (the verify column's probe stream), P = 8, 16, 32.
 *
 * <p>Run: {@code java --enable-native-access=ALL-UNNAMED -cp benchmarks/target/benchmarks.jar
 * org.attn4j.benchmarks.SalientProbeSweep [seed]} (default 20251123).
 */
public final class SalientProbeSweep {
    private static final long PROBE_SALT = 0x7EC3A7L; // QuantVerify's synthetic probe stream
    private static final int TOKENS = 8192;

    private SalientProbeSweep() {}

    public static void main(String[] args) {
        Locale.setDefault(Locale.ROOT);
        long seed = args.length > 0 ? Long.parseLong(args[0]) : 20251123L;
        SyntheticKv s = SyntheticKv.builder().tokens(TOKENS).seed(seed).build();
        System.out.printf("SalientProbeSweep: SyntheticKv seed %d, %d tokens, 32 q / 8 kv heads, d 128; G128 F32 meta, "
                + "Hadamard; BF16 64 sinks + 256 recent; 5%% salient%n", seed, TOKENS);
        System.out.printf("%-6s %8s %10s%n", "format", "probes", "error");
        try (Attn4j lib = Attn4j.open(Device.cpu(), 2)) {
            for (DType t : new DType[] {DType.INT4, DType.INT2}) {
                KvFormat f = KvFormat.quantized(t, 128).withRotation(Rotation.HADAMARD);
                for (int p : new int[] {8, 16, 32}) {
                    long[] positions = new long[p];
                    for (int i = 0; i < p; i++) {
                        positions[i] = TOKENS - p + i + 1;
                    }
                    double e = QuantAccuracy.relativeErrorSalient(lib, s.q(), s.k(), s.v(), 32, 8, 128, TOKENS, f, null,
                            64, 256, 16, s.queriesAt(positions, PROBE_SALT), 0.05);
                    System.out.printf("%-6s %8d %9.3f%%%n", t, p, 100 * e);
                }
            }
        }
    }
}
