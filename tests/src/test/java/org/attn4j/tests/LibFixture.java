package org.attn4j.tests;

import org.attn4j.Attn4j;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;

/** One CPU context per test class (all cores). */
abstract class LibFixture {
    static Attn4j lib;

    @BeforeAll
    static void openLib() {
        lib = Attn4j.open();
    }

    @AfterAll
    static void closeLib() {
        if (lib != null) {
            lib.close();
            lib = null;
        }
    }
}
