package org.attn4j.internal;

import java.lang.foreign.MemorySegment;

import org.attn4j.Attn4jException;
import org.attn4j.Status;
import org.attn4j.bindings.Attn4jNative;

/** Status handling for native calls. */
public final class Native {
    private Native() {}

    /** Throws the native error of this thread when {@code status} is not OK. */
    public static void check(int status, String operation) {
        if (status != 0) {
            throw new Attn4jException(Status.of(status), operation + ": " + lastError());
        }
    }

    public static String lastError() {
        return cString(Attn4jNative.attn4j_last_error());
    }

    /** Reads a NUL-terminated string returned by the library (static storage). */
    public static String cString(MemorySegment p) {
        return p.equals(MemorySegment.NULL) ? "" : p.reinterpret(Long.MAX_VALUE).getString(0);
    }
}
