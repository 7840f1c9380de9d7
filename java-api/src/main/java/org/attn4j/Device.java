package org.attn4j;

/** Where memory lives and kernels run. */
public record Device(Kind kind, int index) {
    public enum Kind {
        CPU(1), CUDA(2);

        final int code;

        Kind(int code) {
            this.code = code;
        }
    }

    public Device {
        if (kind == null) {
            throw Attn4jException.invalid("device kind: null");
        }
        if (index < 0 || (kind == Kind.CPU && index != 0)) {
            throw Attn4jException.invalid("device index: " + index + " is not valid for " + kind);
        }
    }

    private static final Device CPU = new Device(Kind.CPU, 0);

    public static Device cpu() {
        return CPU;
    }

    public static Device cuda(int index) {
        return new Device(Kind.CUDA, index);
    }

    @Override
    public String toString() {
        return kind == Kind.CPU ? "cpu" : "cuda:" + index;
    }
}
