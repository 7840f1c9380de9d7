package org.attn4j.tests;

import org.attn4j.testing.TestDevice;
import org.junit.jupiter.api.BeforeAll;

/** As {@link LibFixture}, on the device of {@code -Dattn4j.test.device} (default cpu). */
abstract class DeviceFixture extends LibFixture {
    @BeforeAll
    static void openOnTestDevice() {
        if (!lib.device().equals(TestDevice.get())) {
            lib.close();
            lib = TestDevice.open();
        }
    }
}
