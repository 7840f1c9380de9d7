package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

import org.attn4j.bindings.attn4j_page_table;

/**
 * A batch's page table in CSR form (FlashInfer's layout): sequence i owns pages
 * {@code indices[indptr[i] .. indptr[i+1])}, all full except the last, which holds
 * {@code lastPageLen[i]} tokens. Off-heap, reusable: {@link PagedKvCache#fillPageTable} rewrites
 * it in place each step without allocating.
 */
public final class PageTable {
    private final MemorySegment indptr;
    private final MemorySegment indices;
    private final MemorySegment lastPageLen;
    private final MemorySegment struct;
    private final MemorySegment indptrDesc;
    private final MemorySegment indicesDesc;
    private final MemorySegment lastPageLenDesc;
    private final int maxBatch;
    private final int maxPages;
    private int batch;

    private PageTable(Arena arena, int maxBatch, int maxPages) {
        if (maxBatch < 1) {
            throw Attn4jException.invalid("maxBatch: must be >= 1, got " + maxBatch);
        }
        if (maxPages < 0) {
            throw Attn4jException.invalid("maxPages: must be >= 0, got " + maxPages);
        }
        this.maxBatch = maxBatch;
        this.maxPages = maxPages;
        this.indptr = arena.allocate(ValueLayout.JAVA_INT, maxBatch + 1L);
        this.indices = arena.allocate(ValueLayout.JAVA_INT, Math.max(maxPages, 1));
        this.lastPageLen = arena.allocate(ValueLayout.JAVA_INT, maxBatch);
        this.struct = attn4j_page_table.allocate(arena);
        attn4j_page_table.struct_size(struct, (int) attn4j_page_table.sizeof());
        this.indptrDesc = attn4j_page_table.indptr(struct);
        this.indicesDesc = attn4j_page_table.indices(struct);
        this.lastPageLenDesc = attn4j_page_table.last_page_len(struct);
    }

    /** An empty table with room for {@code maxBatch} sequences and {@code maxPages} page ids. */
    public static PageTable allocate(Arena arena, int maxBatch, int maxPages) {
        return new PageTable(arena, maxBatch, maxPages);
    }

    /**
     * A table from raw CSR arrays, for callers that manage pages themselves. Contents are checked
     * against a cache by the kernels (page ids in range, lengths consistent), not here.
     */
    public static PageTable of(Arena arena, int[] indptr, int[] indices, int[] lastPageLen) {
        if (indptr == null || indices == null || lastPageLen == null) {
            throw Attn4jException.invalid("indptr, indices, lastPageLen: must not be null");
        }
        if (indptr.length != lastPageLen.length + 1) {
            throw Attn4jException.invalid("indptr: length " + indptr.length + " must be lastPageLen.length + 1 = "
                    + (lastPageLen.length + 1));
        }
        PageTable t = new PageTable(arena, Math.max(lastPageLen.length, 1), indices.length);
        MemorySegment.copy(indptr, 0, t.indptr, ValueLayout.JAVA_INT, 0, indptr.length);
        MemorySegment.copy(indices, 0, t.indices, ValueLayout.JAVA_INT, 0, indices.length);
        MemorySegment.copy(lastPageLen, 0, t.lastPageLen, ValueLayout.JAVA_INT, 0, lastPageLen.length);
        t.publish(lastPageLen.length, indices.length);
        return t;
    }

    /** Sequences in the batch. */
    public int batchSize() {
        return batch;
    }

    public int maxBatch() {
        return maxBatch;
    }

    public int maxPages() {
        return maxPages;
    }

    public int[] indptr() {
        return indptr.asSlice(0, (batch + 1L) * 4).toArray(ValueLayout.JAVA_INT);
    }

    public int[] indices() {
        int nnz = indptr.getAtIndex(ValueLayout.JAVA_INT, batch);
        return indices.asSlice(0, (long) nnz * 4).toArray(ValueLayout.JAVA_INT);
    }

    public int[] lastPageLen() {
        return lastPageLen.asSlice(0, batch * 4L).toArray(ValueLayout.JAVA_INT);
    }

    // ---- package-private: filled by PagedKvCache, read by plans ----

    MemorySegment indptrSegment() {
        return indptr;
    }

    MemorySegment indicesSegment() {
        return indices;
    }

    MemorySegment lastPageLenSegment() {
        return lastPageLen;
    }

    /** Points the native struct at the first {@code batch} sequences and {@code nnz} page ids. */
    void publish(int batch, int nnz) {
        this.batch = batch;
        NativeTensor.fillInts(indptrDesc, indptr, batch + 1L);
        NativeTensor.fillInts(indicesDesc, indices, nnz);
        NativeTensor.fillInts(lastPageLenDesc, lastPageLen, batch);
    }

    MemorySegment nativeStruct(String name) {
        if (!struct.scope().isAlive()) {
            throw Attn4jException.invalid(name + ": the arena owning this page table is closed");
        }
        return struct;
    }
}
