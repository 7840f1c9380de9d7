package org.attn4j;

/** Status codes of the native library (attn4j.h), carried by {@link Attn4jException}. */
public enum Status {
    OK(0),
    /** Wrong shape, dtype, stride, pointer, page id, or non-finite input. */
    INVALID_ARGUMENT(1),
    /** Valid but not implemented for this device or combination. */
    UNSUPPORTED(2),
    OUT_OF_MEMORY(3),
    /** No device, driver error, kernel failure. */
    DEVICE(4),
    /** A bug in attn4j. */
    INTERNAL(5);

    private final int code;

    Status(int code) {
        this.code = code;
    }

    public int code() {
        return code;
    }

    public static Status of(int code) {
        for (Status s : values()) {
            if (s.code == code) {
                return s;
            }
        }
        return INTERNAL;
    }
}
