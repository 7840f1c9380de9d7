package org.attn4j.tests;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.stream.Stream;

import org.attn4j.Attn4j;
import org.attn4j.DType;
import org.attn4j.testing.Runners;
import org.attn4j.testing.Runners.ChunkedCase;
import org.attn4j.testing.Runners.DecodeCase;
import org.attn4j.testing.Runners.PrefillCase;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * One small case per kernel and dtype path, tagged "isa": the surefire executions isa-avx2 and
 * isa-scalar rerun these with ATTN4J_ISA capping the SIMD path (the library reads it at load).
 */
@Tag("isa")
class IsaTest extends LibFixture {

    @Test
    void isaCapHonoured() {
        String isa = System.getenv("ATTN4J_ISA");
        String info = Attn4j.cpuInfo();
        System.out.println("[attn4j] ATTN4J_ISA=" + isa + " cpuInfo: " + info);
        if (isa != null && !isa.equals("avx512")) {
            assertTrue(info.startsWith("isa=" + isa + " "), "ATTN4J_ISA=" + isa + " but " + info);
        }
    }

    static Stream<DecodeCase> decodes() {
        return Stream.of(
                new DecodeCase("isa", 16, 2, 4, 128, DType.BF16, DType.F32, DType.F32, DType.F32,
                        new int[] {1, 37, 300}, true, 101),
                new DecodeCase("isa", 1, 1, 8, 64, DType.F16, DType.F16, DType.BF16, DType.F32,
                        new int[] {129, 2}, true, 102),
                new DecodeCase("isa", 64, 2, 1, 64, DType.F32, DType.F32, DType.F32, DType.F32,
                        new int[] {65, 700}, true, 103),
                new DecodeCase("isa", 16, 1, 4, 48, DType.BF16, DType.BF16, DType.F16, DType.BF16,
                        new int[] {45}, false, 104),
                new DecodeCase("isa-long", 16, 1, 8, 128, DType.BF16, DType.BF16, DType.BF16, DType.BF16,
                        new int[] {2500}, true, 105));
    }

    static Stream<PrefillCase> prefills() {
        return Stream.of(
                new PrefillCase("isa", 2, 4, 128, DType.BF16, DType.BF16, DType.BF16, true, new int[] {1, 33, 70},
                        new int[] {50, 80, 70}, true, 201),
                new PrefillCase("isa", 1, 2, 64, DType.F32, DType.F32, DType.F32, false, new int[] {17, 5},
                        new int[] {9, 40}, true, 202),
                new PrefillCase("isa", 2, 2, 64, DType.F16, DType.F32, DType.F16, true, new int[] {24},
                        new int[] {100}, false, 203));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("decodes")
    void decode(DecodeCase c) throws Throwable {
        Runners.decode(lib, c);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("prefills")
    void prefill(PrefillCase c) throws Throwable {
        Runners.prefill(lib, c);
    }

    @Test
    void chunkedPaged() throws Throwable {
        Runners.chunkedPrefill(lib, new ChunkedCase("isa", 16, 2, 4, 64, DType.BF16, DType.F32, DType.F32, DType.F16,
                new int[] {90, 7}, 32, true, 301));
    }
}
