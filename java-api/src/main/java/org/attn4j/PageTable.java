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
    // One block [indptr: maxBatch + 1][lastPageLen: maxBatch][indices: maxPages], so a device
    // table is uploaded with a single copy.
    private final MirroredInts ints;
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

    private PageTable(int maxBatch, int maxPages, Arena arena, DeviceArena deviceArena) {
        if (maxBatch < 1) {
            throw Attn4jException.invalid("maxBatch: must be >= 1, got " + maxBatch);
        }
        if (maxPages < 0) {
            throw Attn4jException.invalid("maxPages: must be >= 0, got " + maxPages);
        }
        this.maxBatch = maxBatch;
        this.maxPages = maxPages;
        long count = 2L * maxBatch + 1 + Math.max(maxPages, 1);
        this.ints = deviceArena == null ? MirroredInts.onHost(arena, count) : MirroredInts.on(deviceArena, count);
        this.indptr = ints.host.asSlice(0, (maxBatch + 1L) * 4);
        this.lastPageLen = ints.host.asSlice(indptr.byteSize(), maxBatch * 4L);
        this.indices = ints.host.asSlice(indptr.byteSize() + lastPageLen.byteSize());
        // The descriptors live where Java can write them even when the arrays are on a device.
        Arena structArena = arena != null ? arena : Arena.ofAuto();
        this.struct = attn4j_page_table.allocate(structArena);
        attn4j_page_table.struct_size(struct, (int) attn4j_page_table.sizeof());
        this.indptrDesc = attn4j_page_table.indptr(struct);
        this.indicesDesc = attn4j_page_table.indices(struct);
        this.lastPageLenDesc = attn4j_page_table.last_page_len(struct);
    }

    /** An empty host table with room for {@code maxBatch} sequences and {@code maxPages} page ids. */
    public static PageTable allocate(Arena arena, int maxBatch, int maxPages) {
        return new PageTable(maxBatch, maxPages, arena, null);
    }

    /**
     * An empty table for caches on {@code arena}'s device. On CUDA it is filled in pinned host
     * memory and each fill enqueues one copy into its device memory on the current stream. A refill
     * first waits for the previous copy if the stream was not synchronized through the lib since
     * (a decode loop that reads its output each step already has, so that costs nothing there);
     * inside a graph capture the copy is recorded and reads the pinned memory at each replay.
     * Runs on another stream than the one that filled the table are not ordered after its copy.
     * On a CPU {@code Attn4j} it is a host table.
     */
    public static PageTable allocate(DeviceArena arena, int maxBatch, int maxPages) {
        if (arena == null) {
            throw Attn4jException.invalid("arena: null");
        }
        return new PageTable(maxBatch, maxPages, null, arena);
    }

    /**
     * A table from raw CSR arrays, for callers that manage pages themselves. Contents are checked
     * against a cache by the kernels (page ids in range, lengths consistent), not here.
     */
    public static PageTable of(Arena arena, int[] indptr, int[] indices, int[] lastPageLen) {
        checkCsr(indptr, indices, lastPageLen);
        return filled(new PageTable(Math.max(lastPageLen.length, 1), indices.length, arena, null), indptr, indices,
                lastPageLen);
    }

    /** As {@link #of(Arena, int[], int[], int[])}, for caches on {@code arena}'s device (uploaded at once). */
    public static PageTable of(DeviceArena arena, int[] indptr, int[] indices, int[] lastPageLen) {
        checkCsr(indptr, indices, lastPageLen);
        PageTable t = allocate(arena, Math.max(lastPageLen.length, 1), indices.length);
        return filled(t, indptr, indices, lastPageLen);
    }

    private static void checkCsr(int[] indptr, int[] indices, int[] lastPageLen) {
        if (indptr == null || indices == null || lastPageLen == null) {
            throw Attn4jException.invalid("indptr, indices, lastPageLen: must not be null");
        }
        if (indptr.length != lastPageLen.length + 1) {
            throw Attn4jException.invalid("indptr: length " + indptr.length + " must be lastPageLen.length + 1 = "
                    + (lastPageLen.length + 1));
        }
    }

    private static PageTable filled(PageTable t, int[] indptr, int[] indices, int[] lastPageLen) {
        MemorySegment.copy(indptr, 0, t.indptr, ValueLayout.JAVA_INT, 0, indptr.length);
        MemorySegment.copy(indices, 0, t.indices, ValueLayout.JAVA_INT, 0, indices.length);
        MemorySegment.copy(lastPageLen, 0, t.lastPageLen, ValueLayout.JAVA_INT, 0, lastPageLen.length);
        t.publish(lastPageLen.length, indices.length);
        return t;
    }

    /** Where the kernels read this table: cpu, or the CUDA device of its {@link DeviceArena}. */
    public Device device() {
        return ints.device();
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

    /**
     * Points the native struct at the first {@code batch} sequences and {@code nnz} page ids, and
     * uploads them when the kernels read device memory (indptr, lastPageLen and the used indices
     * are one contiguous prefix of the block).
     */
    /** Before Java rewrites the table: waits for an upload that may still read it. */
    void beginRefill() {
        ints.beforeHostWrite();
    }

    void publish(int batch, int nnz) {
        this.batch = batch;
        long indicesAt = 2L * maxBatch + 1;
        ints.describe(indptrDesc, 0, batch + 1L);
        ints.describe(lastPageLenDesc, maxBatch + 1L, batch);
        ints.describe(indicesDesc, indicesAt, nnz);
        ints.upload(indicesAt + nnz);
    }

    MemorySegment nativeStruct(String name) {
        if (!struct.scope().isAlive() || !ints.isAlive()) {
            throw Attn4jException.invalid(name + ": the arena owning this page table is closed");
        }
        return struct;
    }
}
