package org.attn4j;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;

import org.attn4j.bindings.Attn4jNative;
import org.attn4j.bindings.attn4j_kv_quant;
import org.attn4j.bindings.attn4j_paged_kv;
import org.attn4j.bindings.attn4j_tensor;
import org.attn4j.internal.Floats;
import org.attn4j.internal.HugePages;
import org.attn4j.internal.Native;
import org.attn4j.quant.Calibration;

/**
 * A paged KV cache: for each layer, one K slab and one V slab of {@code numPages} pages, each page
 * holding {@code pageSize} tokens of every KV head (layout [page][kv_head][slot][head_dim]). A page
 * id names the same slot in every layer. The storage {@linkplain KvFormat format} is F32, F16,
 * BF16 or a quantized one (INT8 / INT4 / INT2 codes with per-group scales, quantized on write,
 * optionally rotated by Hadamard or by a {@link Calibration}); see {@link TieredKvCache} for BF16
 * sinks and recent window over a quantized middle. Sequences own lists of pages; {@link #fork} shares full
 * pages copy-on-write style (the partial last page is copied) and {@link #free} returns pages.
 *
 * <p>Writing is two steps so one reservation serves every layer: {@link #reserve} grows the
 * sequences and hands out pages once; {@link #write} stores one layer's new K/V into them
 * (converting to the cache dtype). {@link #append} does both for single-layer caches. The memory
 * lives in one shared arena closed by {@link #close()}. Not thread-safe.
 *
 * <p>On a CUDA {@link Attn4j} the pages are device memory (owned by the cache's own
 * {@link DeviceArena}); {@link #write} then takes device K/V tensors and enqueues on the current
 * stream, and page tables ({@link #pageTable}, reservations) are device tables, uploaded from
 * pinned staging when filled, so a decode step allocates nothing.
 */
public final class PagedKvCache implements AutoCloseable {
    private final Attn4j lib;
    private final int layers;
    private final int kvHeads;
    private final int headDim;
    private final int pageSize;
    private final int numPages;
    private final KvFormat format;
    private final DType dtype;
    private final long pageBytes;
    private final Arena arena;
    private final DeviceArena deviceArena; // null on CPU: pages then live in huge-page host memory
    private final MemorySegment[] kSlabs;
    private final MemorySegment[] vSlabs;
    private final MemorySegment[] layerStructs;
    private final MemorySegment kDesc;
    private final MemorySegment vDesc;
    private MemorySegment gatherK; // rows gathered from a page by writeFromPage, made on first use
    private MemorySegment gatherV;

    private final int[] freePages;
    private int freeTop;
    private final int[] refCount;
    private Sequence[] sequences = new Sequence[16];
    private int generation;

    private static final class Sequence {
        int[] pages = new int[4];
        int pageCount;
        long length;
    }

    private PagedKvCache(Builder b) {
        this.lib = b.lib;
        this.layers = b.layers;
        this.kvHeads = b.kvHeads;
        this.headDim = b.headDim;
        this.pageSize = b.pageSize;
        this.numPages = b.numPages;
        this.format = b.format;
        this.dtype = format.dtype();
        this.pageBytes = (long) kvHeads * pageSize * format.tokenBytes(headDim);
        long slabBytes = Math.multiplyExact(pageBytes, (long) numPages);
        this.arena = Arena.ofShared();
        Device device = lib.device();
        this.deviceArena = device.kind() == Device.Kind.CPU ? null : lib.newDeviceArena();
        try {
            kSlabs = new MemorySegment[layers];
            vSlabs = new MemorySegment[layers];
            layerStructs = new MemorySegment[layers];
            for (int l = 0; l < layers; l++) {
                kSlabs[l] = allocateSlab(slabBytes);
                vSlabs[l] = allocateSlab(slabBytes);
                MemorySegment s = attn4j_paged_kv.allocate(arena);
                attn4j_paged_kv.struct_size(s, (int) attn4j_paged_kv.sizeof());
                attn4j_paged_kv.dtype(s, dtype.code());
                attn4j_paged_kv.num_kv_heads(s, kvHeads);
                attn4j_paged_kv.head_dim(s, headDim);
                attn4j_paged_kv.page_size(s, pageSize);
                attn4j_paged_kv.num_pages(s, numPages);
                attn4j_paged_kv.device_type(s, device.kind().code);
                attn4j_paged_kv.device_id(s, device.index());
                attn4j_paged_kv.k_data(s, kSlabs[l]);
                attn4j_paged_kv.v_data(s, vSlabs[l]);
                attn4j_paged_kv.k_size_bytes(s, slabBytes);
                attn4j_paged_kv.v_size_bytes(s, slabBytes);
                if (format.isQuantized()) {
                    fillQuant(attn4j_paged_kv.quant(s), l, b.calibration);
                }
                layerStructs[l] = s;
            }
            kDesc = attn4j_tensor.allocate(arena);
            vDesc = attn4j_tensor.allocate(arena);
        } catch (OutOfMemoryError | RuntimeException e) {
            close();
            throw new Attn4jException(Status.OUT_OF_MEMORY, "cache: could not allocate " + layers + " x 2 x "
                    + slabBytes + " bytes: " + e.getMessage(), e);
        }
        this.freePages = new int[numPages];
        for (int i = 0; i < numPages; i++) {
            freePages[i] = numPages - 1 - i;
        }
        this.freeTop = numPages;
        this.refCount = new int[numPages];
    }

    public static Builder builder(Attn4j lib) {
        return new Builder(lib);
    }

    /** Configures a cache; every setting is checked in {@link #build()}. */
    public static final class Builder {
        private final Attn4j lib;
        private int layers = 1;
        private int kvHeads = -1;
        private int headDim = -1;
        private int pageSize = 16;
        private int numPages = -1;
        private KvFormat format = KvFormat.of(DType.BF16);
        private boolean defaultGroup;
        private Calibration calibration;

        private Builder(Attn4j lib) {
            if (lib == null) {
                throw Attn4jException.invalid("lib: null");
            }
            this.lib = lib;
        }

        public Builder layers(int layers) {
            this.layers = layers;
            return this;
        }

        public Builder kvHeads(int kvHeads) {
            this.kvHeads = kvHeads;
            return this;
        }

        public Builder headDim(int headDim) {
            this.headDim = headDim;
            return this;
        }

        public Builder pageSize(int pageSize) {
            this.pageSize = pageSize;
            return this;
        }

        /** Pages per layer; a page holds {@code pageSize} tokens of all KV heads. */
        public Builder numPages(int numPages) {
            this.numPages = numPages;
            return this;
        }

        /**
         * Storage type: F32, F16, BF16 (default), or INT8 / INT4 / INT2 with the defaults of
         * {@link KvFormat#quantized} and groups of min(128, headDim) values. Use
         * {@link #format(KvFormat)} for rotations, clipping and other group sizes.
         */
        public Builder dtype(DType dtype) {
            if (dtype == null) {
                throw Attn4jException.invalid("dtype: null");
            }
            this.format = dtype.isQuantized() ? KvFormat.quantized(dtype, 128) : KvFormat.of(dtype);
            this.defaultGroup = dtype.isQuantized();
            return this;
        }

        /** Storage format (float or quantized). */
        public Builder format(KvFormat format) {
            if (format == null) {
                throw Attn4jException.invalid("format: null");
            }
            this.format = format;
            this.defaultGroup = false;
            return this;
        }

        /**
         * Per-layer, per-head rotations and clipping ratios for a format with
         * {@link Rotation#CALIBRATED}; checked against the cache's layers, kvHeads, headDim, bits
         * and group size.
         */
        public Builder calibration(Calibration calibration) {
            this.calibration = calibration;
            return this;
        }

        public PagedKvCache build() {
            positive("layers", layers);
            positive("kvHeads", kvHeads);
            positive("headDim", headDim);
            positive("pageSize", pageSize);
            positive("numPages", numPages);
            if (defaultGroup) {
                format = KvFormat.quantized(format.dtype(), headDim % 128 == 0 ? 128 : headDim % 64 == 0 ? 64 : 32);
            }
            checkFormat(format, calibration, layers, kvHeads, headDim);
            return new PagedKvCache(this);
        }

        private static void positive(String name, int v) {
            if (v <= 0) {
                throw Attn4jException.invalid(name + ": must be > 0, got " + (v == -1 ? "unset" : v));
            }
        }
    }

    public int layers() {
        return layers;
    }

    public int kvHeads() {
        return kvHeads;
    }

    public int headDim() {
        return headDim;
    }

    public int pageSize() {
        return pageSize;
    }

    public int numPages() {
        return numPages;
    }

    /** The storage type: F32, F16, BF16, INT8, INT4 or INT2 (see {@link #format()}). */
    public DType dtype() {
        return dtype;
    }

    public KvFormat format() {
        return format;
    }

    /** Where the pages live: the device of the {@link Attn4j} that built the cache. */
    public Device device() {
        return lib.device();
    }

    public int freePageCount() {
        return freeTop;
    }

    /** Bytes one token occupies across K and V of one layer (all KV heads), scales included. */
    public long bytesPerToken() {
        return 2L * kvHeads * format.tokenBytes(headDim);
    }

    /** Bits stored per K or V element (16 for BF16; quantized formats include scales and zeros). */
    public double effectiveBitsPerElement() {
        return format.effectiveBits(headDim);
    }

    // ---- sequences ----

    /**
     * A new empty sequence; returns its id. Ids are small integers and the id of a
     * {@linkplain #free freed} sequence is handed out again, so drop an id when freeing it.
     */
    public int newSequence() {
        checkOpen();
        for (int i = 0; i < sequences.length; i++) {
            if (sequences[i] == null) {
                sequences[i] = new Sequence();
                return i;
            }
        }
        int id = sequences.length;
        sequences = Arrays.copyOf(sequences, id * 2);
        sequences[id] = new Sequence();
        return id;
    }

    /** Tokens stored in sequence {@code seq}. */
    public long length(int seq) {
        return sequence(seq, "seq").length;
    }

    /**
     * A new sequence with the same tokens as {@code seq}: full pages are shared, the partial last
     * page (if any) is copied, so appends to either never touch the other.
     */
    public int fork(int seq) {
        Sequence src = sequence(seq, "seq");
        boolean partial = src.length % pageSize != 0;
        if (partial && freeTop == 0) {
            throw new Attn4jException(Status.OUT_OF_MEMORY, "fork: no free page to copy the partial last page of sequence "
                    + seq + " (" + numPages + " pages, all in use)");
        }
        int id = newSequence();
        Sequence dst = sequences[id];
        dst.pages = Arrays.copyOf(src.pages, Math.max(src.pages.length, 4));
        dst.pageCount = src.pageCount;
        dst.length = src.length;
        int shared = partial ? src.pageCount - 1 : src.pageCount;
        for (int i = 0; i < shared; i++) {
            refCount[src.pages[i]]++;
        }
        if (partial) {
            int from = src.pages[src.pageCount - 1];
            int to = takePage();
            for (int l = 0; l < layers; l++) {
                copyPage(kSlabs[l], from, to);
                copyPage(vSlabs[l], from, to);
            }
            dst.pages[dst.pageCount - 1] = to;
        }
        return id;
    }

    /** Releases sequence {@code seq}; pages no other sequence shares become free. */
    public void free(int seq) {
        Sequence s = sequence(seq, "seq");
        for (int i = 0; i < s.pageCount; i++) {
            releasePage(s.pages[i]);
        }
        sequences[seq] = null;
    }

    // ---- writing ----

    /**
     * Grows each {@code seqs[i]} by {@code counts[i]} tokens, taking pages as needed, all or
     * nothing: if the pages do not suffice, nothing changes and an {@link Status#OUT_OF_MEMORY}
     * exception is thrown. The returned reservation is then filled layer by layer with
     * {@link #write}; {@link #rollback} undoes it if writing fails. Allocates a new reservation;
     * steady-state decode loops use {@link #reserve(int[], int[], Reservation)} instead.
     */
    public Reservation reserve(int[] seqs, int[] counts) {
        checkSeqCounts(seqs, counts);
        int pages = 0;
        for (int i = 0; i < seqs.length; i++) {
            Sequence s = sequenceAt(seqs, i);
            pages += Math.max(s.pageCount, pagesFor(s.length + Math.max(counts[i], 0)));
        }
        // Sized for the growth; the arguments themselves are checked by the reserve below.
        Reservation r = newReservation(seqs.length, Math.max(pages, 1));
        reserve(seqs, counts, r);
        return r;
    }

    /**
     * An empty, reusable reservation with room for {@code maxBatch} sequences holding up to
     * {@code maxPages} pages in total (after the growth). Its native buffers are freed by the
     * garbage collector once it is unreachable (on a CUDA cache: when the cache closes).
     */
    public Reservation newReservation(int maxBatch, int maxPages) {
        checkOpen();
        if (maxBatch < 1) {
            throw Attn4jException.invalid("maxBatch: must be >= 1, got " + maxBatch);
        }
        if (maxPages < 1) {
            throw Attn4jException.invalid("maxPages: must be >= 1, got " + maxPages);
        }
        return new Reservation(this, maxBatch, newTable(maxBatch, maxPages), newInts(maxBatch + 1L));
    }

    /**
     * As {@link #reserve(int[], int[])}, but fills {@code into} (made by
     * {@link #newReservation}) instead of allocating: a decode step of reserve, write and run
     * then creates no garbage. {@code into} must not be pending: write or roll back the previous
     * use first (a reservation is only a record; reusing it does not undo anything).
     */
    public Reservation reserve(int[] seqs, int[] counts, Reservation into) {
        checkOpen();
        checkSeqCounts(seqs, counts);
        if (into == null || into.cache != this) {
            throw Attn4jException.invalid("into: " + (into == null ? "null" : "made by another cache"));
        }
        if (seqs.length > into.seqs.length) {
            throw Attn4jException.invalid("seqs: " + seqs.length + " sequences exceed the reservation's maxBatch "
                    + into.seqs.length);
        }
        long needed = 0;
        long pagesAfter = 0;
        for (int i = 0; i < seqs.length; i++) {
            Sequence s = sequenceAt(seqs, i);
            for (int j = 0; j < i; j++) {
                if (seqs[j] == seqs[i]) {
                    throw Attn4jException.invalid("seqs[" + i + "]: sequence " + seqs[i] + " appears twice");
                }
            }
            if (counts[i] < 0) {
                throw Attn4jException.invalid("counts[" + i + "]: negative token count " + counts[i]);
            }
            if (s.length + counts[i] == 0) {
                throw Attn4jException.invalid("counts[" + i + "]: sequence " + seqs[i]
                        + " is empty and would stay empty (kernels reject empty sequences)");
            }
            int target = pagesFor(s.length + counts[i]);
            needed += target - s.pageCount;
            pagesAfter += target;
        }
        if (pagesAfter > into.table.maxPages()) {
            throw Attn4jException.invalid("into: room for " + into.table.maxPages() + " page ids, the batch needs "
                    + pagesAfter);
        }
        if (needed > freeTop) {
            throw new Attn4jException(Status.OUT_OF_MEMORY, "cache: out of pages: the reservation needs " + needed
                    + " pages, " + freeTop + " of " + numPages + " are free");
        }
        int total = 0;
        into.indptr.beforeHostWrite();
        into.indptr.host.setAtIndex(ValueLayout.JAVA_INT, 0, 0);
        for (int i = 0; i < seqs.length; i++) {
            Sequence s = sequences[seqs[i]];
            into.seqs[i] = seqs[i];
            into.oldPageCounts[i] = s.pageCount;
            into.oldLengths[i] = s.length;
            s.length += counts[i];
            int target = pagesFor(s.length);
            if (s.pages.length < target) {
                s.pages = Arrays.copyOf(s.pages, Math.max(target, s.pages.length * 2));
            }
            while (s.pageCount < target) {
                s.pages[s.pageCount++] = takePage();
            }
            total = Math.addExact(total, counts[i]);
            into.indptr.host.setAtIndex(ValueLayout.JAVA_INT, i + 1, total);
        }
        into.batch = seqs.length;
        into.totalTokens = total;
        into.generation = generation;
        into.rolledBack = false;
        fillPageTable(into.table, seqs);
        into.indptr.describe(into.appendIndptrDesc, 0, seqs.length + 1L);
        into.indptr.upload(seqs.length + 1L);
        return into;
    }

    private static void checkSeqCounts(int[] seqs, int[] counts) {
        if (seqs == null || counts == null || seqs.length != counts.length || seqs.length == 0) {
            throw Attn4jException.invalid("seqs, counts: need two non-empty arrays of equal length, got "
                    + (seqs == null ? "null" : seqs.length) + " and " + (counts == null ? "null" : counts.length));
        }
    }

    /**
     * Writes layer {@code layer}'s K and V for a reservation: {@code k}, {@code v} are
     * [totalNewTokens, kvHeads, headDim] (F32, F16 or BF16), sequence by sequence in the order of
     * the reservation. Non-finite values are rejected before anything is written. On a CUDA cache
     * they are device tensors and the write is enqueued on the current stream.
     */
    public void write(int layer, Reservation r, Tensor k, Tensor v) {
        checkOpen();
        checkLayer(layer);
        if (r == null || r.cache != this) {
            throw Attn4jException.invalid("reservation: " + (r == null ? "null" : "made by another cache"));
        }
        if (r.generation != generation || r.rolledBack) {
            throw Attn4jException.invalid("reservation: no longer valid (rolled back, or the cache changed since)");
        }
        checkKv(k, "k", r.totalTokens);
        checkKv(v, "v", r.totalTokens);
        Device device = lib.device();
        NativeTensor.fill(kDesc, k, "k", device);
        NativeTensor.fill(vDesc, v, "v", device);
        Native.check(Attn4jNative.attn4j_paged_kv_append(lib.handle(), layerStructs[layer],
                r.table.nativeStruct("reservation.table"), r.appendIndptrDesc, kDesc, vDesc), "write");
    }

    /** Undoes a reservation: lengths shrink back and the pages it took are freed. */
    public void rollback(Reservation r) {
        checkOpen();
        if (r == null || r.cache != this || r.rolledBack) {
            throw Attn4jException.invalid("reservation: " + (r == null ? "null" : r.rolledBack
                    ? "already rolled back" : "made by another cache"));
        }
        for (int i = r.batch - 1; i >= 0; i--) {
            Sequence s = sequences[r.seqs[i]];
            if (s == null) {
                continue;
            }
            while (s.pageCount > r.oldPageCounts[i]) {
                releasePage(s.pages[--s.pageCount]);
            }
            s.length = r.oldLengths[i];
        }
        r.rolledBack = true;
        generation++;
    }

    /**
     * Single-layer convenience: reserves {@code counts} tokens on {@code seqs} and writes
     * {@code k}/{@code v} into layer 0; on any failure the cache is left as it was.
     */
    public Reservation append(int[] seqs, int[] counts, Tensor k, Tensor v) {
        if (layers != 1) {
            throw Attn4jException.invalid("append: this cache has " + layers
                    + " layers; use reserve(...) once, then write(layer, ...) for each layer");
        }
        Reservation r = reserve(seqs, counts);
        try {
            write(0, r, k, v);
        } catch (RuntimeException e) {
            rollback(r);
            throw e;
        }
        return r;
    }

    // ---- page tables ----

    /**
     * A new page table for {@code seqs}, on the cache's device. A host table is freed by the
     * garbage collector; a device table's memory is held until the cache closes, so loops reuse
     * one table through {@link #fillPageTable} instead.
     */
    public PageTable pageTable(int... seqs) {
        int pages = 0;
        for (int i = 0; i < seqs.length; i++) {
            pages += sequenceAt(seqs, i).pageCount;
        }
        PageTable t = newTable(Math.max(seqs.length, 1), pages);
        fillPageTable(t, seqs);
        return t;
    }

    /**
     * Rewrites {@code table} in place for {@code seqs}, allocating nothing. The table must be on
     * the cache's device ({@link PageTable#allocate(DeviceArena, int, int)} for a CUDA cache).
     */
    public void fillPageTable(PageTable table, int[] seqs) {
        checkOpen();
        if (table == null) {
            throw Attn4jException.invalid("table: null");
        }
        if (!table.device().equals(lib.device())) {
            throw Attn4jException.invalid("table: a page table on " + table.device() + " for a cache on "
                    + lib.device() + "; allocate it with PageTable.allocate(DeviceArena, ...) of this device");
        }
        if (seqs == null || seqs.length == 0) {
            throw Attn4jException.invalid("seqs: need at least one sequence");
        }
        if (seqs.length > table.maxBatch()) {
            throw Attn4jException.invalid("seqs: " + seqs.length + " sequences exceed the table's maxBatch "
                    + table.maxBatch());
        }
        table.beginRefill();
        MemorySegment indptr = table.indptrSegment();
        MemorySegment indices = table.indicesSegment();
        MemorySegment last = table.lastPageLenSegment();
        int nnz = 0;
        indptr.setAtIndex(ValueLayout.JAVA_INT, 0, 0);
        for (int i = 0; i < seqs.length; i++) {
            Sequence s = sequenceAt(seqs, i);
            if (nnz + s.pageCount > table.maxPages()) {
                throw Attn4jException.invalid("table: room for " + table.maxPages() + " page ids, the batch needs more");
            }
            MemorySegment.copy(s.pages, 0, indices, ValueLayout.JAVA_INT, (long) nnz * 4, s.pageCount);
            nnz += s.pageCount;
            indptr.setAtIndex(ValueLayout.JAVA_INT, i + 1, nnz);
            int rem = (int) (s.length % pageSize);
            last.setAtIndex(ValueLayout.JAVA_INT, i, s.length == 0 ? 0 : rem == 0 ? pageSize : rem);
        }
        table.publish(seqs.length, nnz);
    }

    // ---- package-private, for TieredKvCache ----

    /** Page {@code index} of sequence {@code seq}. */
    int pageOf(int seq, int index) {
        Sequence s = sequence(seq, "seq");
        if (index < 0 || index >= s.pageCount) {
            throw Attn4jException.invalid("index: page " + index + " outside [0, " + s.pageCount + ")");
        }
        return s.pages[index];
    }

    /**
     * Removes full page {@code index} from sequence {@code seq} (its tokens leave the sequence;
     * attention over a sequence does not depend on the order of its pages). The page is freed
     * unless another sequence shares it.
     */
    void dropFullPage(int seq, int index) {
        Sequence s = sequence(seq, "seq");
        boolean full = index < s.pageCount - 1 || (index == s.pageCount - 1 && s.length % pageSize == 0);
        if (index < 0 || index >= s.pageCount || !full) {
            throw Attn4jException.invalid("index: page " + index + " of sequence " + seq + " is not a full page");
        }
        int p = s.pages[index];
        System.arraycopy(s.pages, index + 1, s.pages, index, s.pageCount - index - 1);
        s.pageCount--;
        s.length -= pageSize;
        releasePage(p);
    }

    /**
     * Writes layer {@code layer} of reservation {@code r} from page {@code srcPage} of the same
     * layer of {@code src}, a float cache of the same geometry, converting or quantizing on write:
     * tokens {@code tokens[0 .. n)} of the page (ascending indices), or the whole page when
     * {@code tokens} is null; {@code r} holds exactly those tokens. Allocates nothing after the
     * first gather: the moves of an aged window page of a {@link TieredKvCache}.
     */
    void writeFromPage(int layer, Reservation r, PagedKvCache src, int srcPage, int[] tokens, int n) {
        checkOpen();
        checkLayer(layer);
        if (r == null || r.cache != this || r.generation != generation || r.rolledBack) {
            throw Attn4jException.invalid("reservation: not a live reservation of this cache");
        }
        int rows = tokens == null ? pageSize : n;
        if (src.format.isQuantized() || src.kvHeads != kvHeads || src.headDim != headDim || src.pageSize != pageSize
                || r.totalTokens != rows || rows <= 0 || rows > pageSize) {
            throw new Attn4jException(Status.INTERNAL, "writeFromPage: source cache or reservation does not match");
        }
        long off = srcPage * src.pageBytes;
        Device device = lib.device();
        if (tokens == null) {
            long left = src.pageBytes * src.numPages - off;
            NativeTensor.fillView(kDesc, src.kSlabs[layer].address() + off, left, src.dtype, pageSize, kvHeads, headDim,
                    headDim, (long) pageSize * headDim, device);
            NativeTensor.fillView(vDesc, src.vSlabs[layer].address() + off, left, src.dtype, pageSize, kvHeads, headDim,
                    headDim, (long) pageSize * headDim, device);
        } else {
            if (deviceArena != null) {
                throw new Attn4jException(Status.INTERNAL, "writeFromPage: token gathers run on host pages only");
            }
            // Gather the chosen rows into [n, kvHeads, headDim] (pages are [kvHeads, pageSize, headDim]).
            long rowBytes = (long) headDim * src.dtype.byteSize();
            if (gatherK == null || gatherK.byteSize() < (long) pageSize * kvHeads * rowBytes) {
                gatherK = arena.allocate((long) pageSize * kvHeads * rowBytes, 64);
                gatherV = arena.allocate((long) pageSize * kvHeads * rowBytes, 64);
            }
            for (int i = 0; i < n; i++) {
                for (int h = 0; h < kvHeads; h++) {
                    long from = off + ((long) h * pageSize + tokens[i]) * rowBytes;
                    long to = ((long) i * kvHeads + h) * rowBytes;
                    MemorySegment.copy(src.kSlabs[layer], from, gatherK, to, rowBytes);
                    MemorySegment.copy(src.vSlabs[layer], from, gatherV, to, rowBytes);
                }
            }
            NativeTensor.fillView(kDesc, gatherK.address(), gatherK.byteSize(), src.dtype, n, kvHeads, headDim,
                    (long) kvHeads * headDim, headDim, device);
            NativeTensor.fillView(vDesc, gatherV.address(), gatherV.byteSize(), src.dtype, n, kvHeads, headDim,
                    (long) kvHeads * headDim, headDim, device);
        }
        Native.check(Attn4jNative.attn4j_paged_kv_append(lib.handle(), layerStructs[layer],
                r.table.nativeStruct("reservation.table"), r.appendIndptrDesc, kDesc, vDesc), "write");
    }

    /** The keys of page {@code page} of layer {@code layer} (a host float cache) as floats [kvHeads][pageSize][headDim]. */
    void pageKeys(int layer, int page, float[] dst) {
        checkOpen();
        checkLayer(layer);
        if (format.isQuantized() || deviceArena != null) {
            throw new Attn4jException(Status.INTERNAL, "pageKeys: needs a host float cache");
        }
        MemorySegment slab = kSlabs[layer];
        long base = page * pageBytes;
        int n = kvHeads * pageSize * headDim;
        for (int i = 0; i < n; i++) {
            dst[i] = switch (dtype) {
                case BF16 -> Floats.fromBf16(slab.get(ValueLayout.JAVA_SHORT_UNALIGNED, base + 2L * i));
                case F16 -> Floats.fromF16(slab.get(ValueLayout.JAVA_SHORT_UNALIGNED, base + 2L * i));
                case F32 -> slab.get(ValueLayout.JAVA_FLOAT_UNALIGNED, base + 4L * i);
                default -> throw new IllegalStateException("unreachable: float cache of " + dtype);
            };
        }
    }

    // ---- package-private, for plans ----

    MemorySegment layerStruct(int layer) {
        checkOpen();
        checkLayer(layer);
        return layerStructs[layer];
    }

    @Override
    public void close() {
        if (deviceArena != null) {
            deviceArena.close();
        }
        if (arena.scope().isAlive()) {
            arena.close();
        }
    }

    private MemorySegment allocateSlab(long bytes) {
        return deviceArena == null ? HugePages.allocate(arena, bytes) : deviceArena.allocateBytes(bytes);
    }

    /** Copies page {@code from} of a slab onto page {@code to} (the copy-on-write of a fork). */
    private void copyPage(MemorySegment slab, int from, int to) {
        if (deviceArena == null) {
            MemorySegment.copy(slab, from * pageBytes, slab, to * pageBytes, pageBytes);
        } else {
            lib.memcpy(MemorySegment.ofAddress(slab.address() + to * pageBytes),
                    MemorySegment.ofAddress(slab.address() + from * pageBytes), pageBytes, false, "fork");
        }
    }

    /** A page table on the cache's device (a CUDA one lives until the cache closes). */
    PageTable newTable(int maxBatch, int maxPages) {
        return deviceArena == null ? PageTable.allocate(Arena.ofAuto(), maxBatch, maxPages)
                : PageTable.allocate(deviceArena, maxBatch, maxPages);
    }

    private MirroredInts newInts(long count) {
        return deviceArena == null ? MirroredInts.onHost(Arena.ofAuto(), count) : MirroredInts.on(deviceArena, count);
    }

    private void fillQuant(MemorySegment q, int layer, Calibration cal) {
        attn4j_kv_quant.group_size(q, format.groupSize());
        attn4j_kv_quant.meta_dtype(q, format.metaDtype().code());
        Rotation r = format.rotation();
        int nativeRot = r == Rotation.CALIBRATED ? 2 : r.code();
        attn4j_kv_quant.k_rotation(q, nativeRot);
        attn4j_kv_quant.v_rotation(q, nativeRot);
        float[] kClip = new float[kvHeads];
        float[] vClip = new float[kvHeads];
        for (int h = 0; h < kvHeads; h++) {
            kClip[h] = cal != null ? cal.kClip(layer, h) : format.keyClip();
            vClip[h] = cal != null ? cal.vClip(layer, h) : format.valueClip();
        }
        attn4j_kv_quant.k_clip(q, arena.allocateFrom(ValueLayout.JAVA_FLOAT, kClip));
        attn4j_kv_quant.v_clip(q, arena.allocateFrom(ValueLayout.JAVA_FLOAT, vClip));
        if (r == Rotation.CALIBRATED) {
            attn4j_kv_quant.k_matrix(q, onCacheDevice(arena.allocateFrom(ValueLayout.JAVA_FLOAT, cal.kRotations(layer))));
            attn4j_kv_quant.v_matrix(q, onCacheDevice(arena.allocateFrom(ValueLayout.JAVA_FLOAT, cal.vRotations(layer))));
        } else {
            attn4j_kv_quant.k_matrix(q, MemorySegment.NULL);
            attn4j_kv_quant.v_matrix(q, MemorySegment.NULL);
        }
    }

    /** {@code host} itself on CPU; a device copy of it on CUDA (the ABI wants rotation matrices there). */
    private MemorySegment onCacheDevice(MemorySegment host) {
        if (deviceArena == null) {
            return host;
        }
        MemorySegment d = deviceArena.allocateBytes(host.byteSize());
        lib.memcpy(d, host, host.byteSize(), false, "cache: rotation matrices");
        return d;
    }

    static void checkFormat(KvFormat f, Calibration cal, int layers, int kvHeads, int headDim) {
        f.tokenBytes(headDim);  // group size divides head_dim
        if (f.rotation() == Rotation.HADAMARD && Integer.bitCount(headDim) != 1) {
            throw Attn4jException.invalid("format: Hadamard rotation needs a power-of-two headDim, got " + headDim);
        }
        if (f.rotation() == Rotation.CALIBRATED && cal == null) {
            throw Attn4jException.invalid("calibration: format " + f + " needs a calibration (Builder.calibration)");
        }
        if (cal != null && f.rotation() != Rotation.CALIBRATED) {
            throw Attn4jException.invalid("calibration: given, but format " + f
                    + " does not use it; use format.withRotation(Rotation.CALIBRATED)");
        }
        if (cal != null) {
            cal.requireMatches(layers, kvHeads, headDim, f.dtype().bits(), f.groupSize());
        }
    }

    private void checkOpen() {
        if (!isOpen()) {
            throw new IllegalStateException("cache: closed");
        }
    }

    /** Closed by {@link #close()}, or with its Attn4j (which closes the cache's device memory). */
    private boolean isOpen() {
        return arena.scope().isAlive() && (deviceArena == null || deviceArena.isOpen());
    }

    private void checkLayer(int layer) {
        if (layer < 0 || layer >= layers) {
            throw Attn4jException.invalid("layer: " + layer + " outside [0, " + layers + ")");
        }
    }

    private void checkKv(Tensor t, String name, long tokens) {
        if (t == null) {
            throw Attn4jException.invalid(name + ": null");
        }
        if (t.rank() != 3 || t.shape(0) != tokens || t.shape(1) != kvHeads || t.shape(2) != headDim) {
            throw Attn4jException.invalid(name + ": expected shape [" + tokens + ", " + kvHeads + ", " + headDim
                    + "] (new tokens, kvHeads, headDim), got " + Arrays.toString(t.shape()));
        }
        if (!t.dtype().isFloat()) {
            throw Attn4jException.invalid(name + ": dtype must be F32, F16 or BF16, got " + t.dtype());
        }
    }

    /** {@code seqs[i]}'s sequence; the error message is built only on failure (hot path). */
    private Sequence sequenceAt(int[] seqs, int i) {
        int seq = seqs[i];
        if (seq >= 0 && seq < sequences.length && sequences[seq] != null && isOpen()) {
            return sequences[seq];
        }
        return sequence(seq, "seqs[" + i + "]");
    }

    private Sequence sequence(int seq, String name) {
        checkOpen();
        if (seq < 0 || seq >= sequences.length || sequences[seq] == null) {
            throw Attn4jException.invalid(name + ": no live sequence with id " + seq);
        }
        return sequences[seq];
    }

    private int pagesFor(long tokens) {
        return (int) ((tokens + pageSize - 1) / pageSize);
    }

    private int takePage() {
        int p = freePages[--freeTop];
        refCount[p] = 1;
        return p;
    }

    /** Returns a page; bumps the generation so reservations that might point at it go stale. */
    private void releasePage(int p) {
        if (--refCount[p] == 0) {
            freePages[freeTop++] = p;
        }
        generation++;
    }

    /**
     * Positions handed out by {@link #reserve}, to be written per layer. Reusable: pass it back
     * to {@link #reserve(int[], int[], Reservation)} for the next step.
     */
    public static final class Reservation {
        private final PagedKvCache cache;
        private final int[] seqs;
        private final int[] oldPageCounts;
        private final long[] oldLengths;
        private final MirroredInts indptr;
        private final PageTable table;
        private final MemorySegment appendIndptrDesc;
        private int batch;
        private int generation;
        private int totalTokens;
        private boolean rolledBack = true;

        private Reservation(PagedKvCache cache, int maxBatch, PageTable table, MirroredInts indptr) {
            this.cache = cache;
            this.seqs = new int[maxBatch];
            this.oldPageCounts = new int[maxBatch];
            this.oldLengths = new long[maxBatch];
            this.indptr = indptr;
            this.table = table;
            this.appendIndptrDesc = attn4j_tensor.allocate(Arena.ofAuto());
        }

        /** The batch's page table after the reservation (usable for attention right away). */
        public PageTable pageTable() {
            return table;
        }

        /** New tokens across all sequences: the first dimension {@link #write} expects. */
        public int totalTokens() {
            return totalTokens;
        }
    }
}
