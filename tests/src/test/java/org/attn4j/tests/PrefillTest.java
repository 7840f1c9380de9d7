package org.attn4j.tests;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import org.attn4j.DType;
import org.attn4j.testing.Checks;
import org.attn4j.testing.Runners;
import org.attn4j.testing.Runners.ChunkedCase;
import org.attn4j.testing.Runners.PrefillCase;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Ragged prefill (contiguous K/V and chunked over a paged cache) against the fp64 reference, on the
 * device of {@code -Dattn4j.test.device} (cases the CUDA kernel does not cover are skipped there).
 */
class PrefillTest extends DeviceFixture {
    private static final DType[] T = {DType.BF16, DType.F16, DType.F32};

    /** Per sequence: nq = 1, nq < nkv, nq = nkv (and, non-causal only, nq > nkv). */
    private static void lengths(Random rnd, boolean causal, int batch, int[] nq, int[] nkv) {
        for (int i = 0; i < batch; i++) {
            int kind = (i + rnd.nextInt(4)) % (causal ? 3 : 4);
            nkv[i] = 1 + rnd.nextInt(200);
            nq[i] = switch (kind) {
                case 0 -> 1;
                case 1 -> 1 + rnd.nextInt(nkv[i]);
                case 2 -> nkv[i];
                default -> nkv[i] + 1 + rnd.nextInt(40);
            };
        }
    }

    static Stream<PrefillCase> shapes() {
        Random rnd = new Random(Checks.baseSeed() + 20);
        List<PrefillCase> cases = new ArrayList<>();
        int n = 0;
        for (boolean causal : new boolean[] {true, false}) {
            for (int g : new int[] {1, 4, 8}) {
                for (int d : new int[] {64, 128}) {
                    int batch = 1 + rnd.nextInt(4);
                    int[] nq = new int[batch];
                    int[] nkv = new int[batch];
                    lengths(rnd, causal, batch, nq, nkv);
                    cases.add(new PrefillCase("shape", g == 8 ? 1 : 2, g, d, T[n % 3], T[(n / 3) % 3],
                            T[(n + n / 9) % 3], causal, nq, nkv, n % 2 == 1, rnd.nextLong()));
                    n++;
                }
            }
        }
        return cases.stream();
    }

    static Stream<PrefillCase> dtypes() {
        Random rnd = new Random(Checks.baseSeed() + 21);
        List<PrefillCase> cases = new ArrayList<>();
        int n = 0;
        for (DType kv : T) {
            for (DType q : T) {
                for (DType out : T) {
                    boolean causal = n % 2 == 0;
                    int[] nq = new int[2];
                    int[] nkv = new int[2];
                    lengths(rnd, causal, 2, nq, nkv);
                    cases.add(new PrefillCase("dtype", 2, 4, n % 2 == 0 ? 64 : 128, kv, q, out, causal, nq, nkv,
                            n % 3 != 0, rnd.nextLong()));
                    n++;
                }
            }
        }
        cases.add(new PrefillCase("f32", 1, 8, 128, DType.F32, DType.F32, DType.F32, true, new int[] {77, 1, 128},
                new int[] {300, 9, 128}, true, rnd.nextLong()));
        for (int d : new int[] {16, 32, 96, 256}) {
            cases.add(new PrefillCase("headDim", 2, 2, d, DType.BF16, DType.F32, DType.F32, true,
                    new int[] {33, 5}, new int[] {70, 5}, true, rnd.nextLong()));
        }
        // q and K/V of one 16-bit dtype (what the CUDA tensor-core kernel takes), every out dtype
        for (DType in : new DType[] {DType.BF16, DType.F16}) {
            for (DType out : T) {
                boolean causal = n % 2 == 0;
                int[] nq = new int[3];
                int[] nkv = new int[3];
                lengths(rnd, causal, 3, nq, nkv);
                cases.add(new PrefillCase("16-bit", n % 3 == 0 ? 1 : 2, 4, n % 2 == 0 ? 128 : 64, in, in, out, causal,
                        nq, nkv, n % 2 == 1, rnd.nextLong()));
                n++;
            }
        }
        // one larger problem, flash tiling across many KV tiles
        cases.add(new PrefillCase("large", 2, 4, 128, DType.BF16, DType.BF16, DType.BF16, true,
                new int[] {256}, new int[] {1024}, true, rnd.nextLong()));
        cases.add(new PrefillCase("large-f16", 2, 4, 64, DType.F16, DType.F16, DType.F32, false,
                new int[] {300, 700}, new int[] {513, 700}, true, rnd.nextLong()));
        return cases.stream();
    }

    static Stream<ChunkedCase> chunked() {
        Random rnd = new Random(Checks.baseSeed() + 22);
        List<ChunkedCase> cases = new ArrayList<>();
        int n = 0;
        for (int ps : new int[] {1, 16, 64}) {
            for (int g : new int[] {1, 4, 8}) {
                int d = n % 2 == 0 ? 128 : 64;
                int batch = 1 + rnd.nextInt(3);
                int[] lens = new int[batch];
                for (int i = 0; i < batch; i++) {
                    lens[i] = 1 + rnd.nextInt(250);
                }
                cases.add(new ChunkedCase("chunked", ps, g == 8 ? 1 : 2, g, d, T[n % 3], T[(n / 3) % 3],
                        T[(n + 1) % 3], T[(n + 2) % 3], lens, 16 + rnd.nextInt(64), n % 2 == 0, rnd.nextLong()));
                n++;
            }
        }
        cases.add(new ChunkedCase("chunked-16bit", 1, 2, 4, 64, DType.F16, DType.F16, DType.F32, DType.F32,
                new int[] {150, 260}, 70, true, rnd.nextLong()));
        cases.add(new ChunkedCase("chunked-16bit", 64, 1, 8, 128, DType.BF16, DType.BF16, DType.BF16, DType.F32,
                new int[] {333}, 130, false, rnd.nextLong()));
        cases.add(new ChunkedCase("chunked-f32", 16, 2, 4, 128, DType.F32, DType.F32, DType.F32, DType.F32,
                new int[] {200, 31}, 48, true, rnd.nextLong()));
        return cases.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("shapes")
    void shapes(PrefillCase c) throws Throwable {
        Runners.prefill(lib, c);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dtypes")
    void dtypes(PrefillCase c) throws Throwable {
        Runners.prefill(lib, c);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("chunked")
    void chunkedPaged(ChunkedCase c) throws Throwable {
        Runners.chunkedPrefill(lib, c);
    }
}
