package org.attn4j;

/**
 * Every failure of attn4j: a {@link Status} and a message that names the offending argument.
 * Argument errors found in Java (before the native call) carry {@link Status#INVALID_ARGUMENT}
 * like those found natively.
 */
public class Attn4jException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final Status status;

    public Attn4jException(Status status, String message) {
        super(message);
        this.status = status;
    }

    public Attn4jException(Status status, String message, Throwable cause) {
        super(message, cause);
        this.status = status;
    }

    public Status status() {
        return status;
    }

    static Attn4jException invalid(String message) {
        return new Attn4jException(Status.INVALID_ARGUMENT, message);
    }
}
