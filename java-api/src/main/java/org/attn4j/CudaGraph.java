package org.attn4j;

import java.lang.foreign.MemorySegment;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.internal.Native;

/**
 * A recorded sequence of device work ({@link Stream#beginCapture()} ... {@link Stream#endCapture()}),
 * replayed with one launch. A replay uses the addresses captured: change the CONTENTS of the
 * captured tensors and page tables between launches (copies into them, or
 * {@link PagedKvCache#fillPageTable} on the captured table), never swap in other tensors.
 */
public final class CudaGraph implements AutoCloseable {
    private MemorySegment handle;

    CudaGraph(MemorySegment handle) {
        this.handle = handle;
    }

    /** Enqueues one replay of the graph on {@code stream}. */
    public void launch(Stream stream) {
        if (stream == null) {
            throw Attn4jException.invalid("stream: null");
        }
        if (handle == null) {
            throw new IllegalStateException("graph: closed");
        }
        Native.check(Attn4jNative.attn4j_graph_launch(handle, stream.handle()), "graph launch");
    }

    public boolean isOpen() {
        return handle != null;
    }

    @Override
    public void close() {
        if (handle != null) {
            Attn4jNative.attn4j_graph_destroy(handle);
            handle = null;
        }
    }
}
