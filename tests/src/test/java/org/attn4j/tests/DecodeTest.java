package org.attn4j.tests;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;

import org.attn4j.DType;
import org.attn4j.testing.Checks;
import org.attn4j.testing.Runners;
import org.attn4j.testing.Runners.DecodeCase;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Paged decode against the fp64 reference: shapes, page sizes, GQA, dtypes, lengths up to 8k. On
 * the device of {@code -Dattn4j.test.device} (cases the CUDA kernels do not cover are skipped there).
 */
class DecodeTest extends DeviceFixture {
    private static final DType[] T = {DType.BF16, DType.F16, DType.F32};

    /** Page size x GQA ratio x head_dim, ragged batches, dtypes rotating. */
    static Stream<DecodeCase> shapes() {
        Random rnd = new Random(Checks.baseSeed());
        List<DecodeCase> cases = new ArrayList<>();
        int n = 0;
        for (int ps : new int[] {1, 16, 64}) {
            for (int g : new int[] {1, 4, 8}) {
                for (int d : new int[] {64, 128}) {
                    int batch = 1 + rnd.nextInt(4);
                    int[] lens = new int[batch];
                    for (int i = 0; i < batch; i++) {
                        lens[i] = switch (i) {
                            case 0 -> 1 + rnd.nextInt(300);
                            case 1 -> ps * (1 + rnd.nextInt(4)); // exactly full pages
                            case 2 -> 1;
                            default -> 1 + rnd.nextInt(1000);
                        };
                    }
                    DType kv = T[n % 3];
                    DType q = T[(n / 3) % 3];
                    DType out = T[(n / 9 + n) % 3];
                    DType in = T[(n + 1) % 3];
                    cases.add(new DecodeCase("shape", ps, g == 8 ? 1 + rnd.nextInt(2) : 2, g, d, kv, q, out, in, lens,
                            n % 2 == 0, rnd.nextLong()));
                    n++;
                }
            }
        }
        return cases.stream();
    }

    /** Every KV x q x out dtype combination, K/V handed in as each dtype in turn. */
    static Stream<DecodeCase> dtypes() {
        Random rnd = new Random(Checks.baseSeed() + 1);
        List<DecodeCase> cases = new ArrayList<>();
        int n = 0;
        for (DType kv : T) {
            for (DType q : T) {
                for (DType out : T) {
                    DType in = kv == DType.F32 && q == DType.F32 && out == DType.F32 ? DType.F32 : T[n % 3];
                    int[] lens = {1 + rnd.nextInt(200), 1 + rnd.nextInt(50)};
                    cases.add(new DecodeCase("dtype", 16, 2, 4, n % 2 == 0 ? 128 : 64, kv, q, out, in, lens,
                            n % 3 != 2, rnd.nextLong()));
                    n++;
                }
            }
        }
        // all-F32 with F32 input once more, other shapes, so the 1e-5 bar sees GQA 8 and d 128
        cases.add(new DecodeCase("f32", 64, 1, 8, 128, DType.F32, DType.F32, DType.F32, DType.F32,
                new int[] {333, 64, 1}, true, rnd.nextLong()));
        return cases.stream();
    }

    /** Head dims beyond 64/128 (any multiple of 16 up to 256 on CPU). */
    static Stream<DecodeCase> headDims() {
        Random rnd = new Random(Checks.baseSeed() + 2);
        List<DecodeCase> cases = new ArrayList<>();
        for (int d : new int[] {16, 32, 48, 96, 256}) {
            cases.add(new DecodeCase("headDim", 16, 2, 4, d, DType.BF16, DType.F32, DType.F32, DType.F32,
                    new int[] {1 + rnd.nextInt(100), 17}, true, rnd.nextLong()));
            cases.add(new DecodeCase("headDim", 16, 1, 2, d, DType.F32, DType.F32, DType.F32, DType.F32,
                    new int[] {1 + rnd.nextInt(100)}, true, rnd.nextLong()));
        }
        return cases.stream();
    }

    /** A handful of long sequences (split-KV across threads), up to 8k tokens. */
    static Stream<DecodeCase> long_() {
        Random rnd = new Random(Checks.baseSeed() + 3);
        return Stream.of(
                new DecodeCase("long", 16, 1, 8, 128, DType.BF16, DType.BF16, DType.BF16, DType.F32,
                        new int[] {8192}, true, rnd.nextLong()),
                new DecodeCase("long", 64, 2, 4, 64, DType.F32, DType.F32, DType.F32, DType.F32,
                        new int[] {8000}, true, rnd.nextLong()),
                new DecodeCase("long-ragged", 1, 1, 4, 128, DType.F16, DType.F32, DType.F16, DType.F16,
                        new int[] {4097, 1, 2500, 777}, true, rnd.nextLong()),
                new DecodeCase("long-mqa", 16, 1, 32, 64, DType.BF16, DType.F32, DType.F32, DType.BF16,
                        new int[] {3000, 5}, false, rnd.nextLong()));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("shapes")
    void shapes(DecodeCase c) throws Throwable {
        Runners.decode(lib, c);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dtypes")
    void dtypes(DecodeCase c) throws Throwable {
        Runners.decode(lib, c);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("headDims")
    void headDims(DecodeCase c) throws Throwable {
        Runners.decode(lib, c);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("long_")
    void longSequences(DecodeCase c) throws Throwable {
        Runners.decode(lib, c);
    }
}
