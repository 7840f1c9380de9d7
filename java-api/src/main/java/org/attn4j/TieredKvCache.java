package org.attn4j;

import java.lang.foreign.Arena;

import org.attn4j.quant.Calibration;

/**
 * Mixed-precision paged KV cache (OSCAR / KIVI style): the first {@code sinks} tokens of each
 * sequence (attention sinks) and its most recent {@code window} tokens stay in BF16, the tokens in
 * between are stored quantized. Decode ({@link DecodePlan#run(Tensor, TieredKvCache, int,
 * TieredKvCache.Tables, Tensor, Tensor)}) attends to both parts in one native call and merges them
 * by log-sum-exp.
 *
 * <p>Two {@link PagedKvCache}s of the same geometry hold the parts: {@code precise()} (BF16: sink
 * pages, then window pages) and {@code quantized()}. New tokens always go to the BF16 part; once
 * the window holds a full page more than {@code window} tokens, its oldest page is quantized into
 * the quantized part and freed. That move happens at the start of {@link #reserve}, after every
 * layer of the previous step has been written, so the window holds between {@code window} and
 * {@code window + pageSize - 1} tokens. Sequence ids are the same in both parts. A step (reserve,
 * write, fill tables, decode) allocates nothing on the Java heap, moves included. Not
 * thread-safe.
 */
public final class TieredKvCache implements AutoCloseable {
    private final PagedKvCache precise;
    private final PagedKvCache quantized;
    private final int sinks;
    private final int window;
    private final int sinkPages;
    private final PagedKvCache.Reservation move;
    private final int[] one = new int[1];
    private final int[] pageCount = new int[1];

    private TieredKvCache(Builder b) {
        this.sinks = b.sinks;
        this.window = b.window;
        this.sinkPages = b.sinks / b.pageSize;
        PagedKvCache p = null;
        PagedKvCache q = null;
        try {
            p = PagedKvCache.builder(b.lib).layers(b.layers).kvHeads(b.kvHeads).headDim(b.headDim)
                    .pageSize(b.pageSize).numPages(b.precisePages).dtype(DType.BF16).build();
            q = PagedKvCache.builder(b.lib).layers(b.layers).kvHeads(b.kvHeads).headDim(b.headDim)
                    .pageSize(b.pageSize).numPages(b.quantizedPages).format(b.format).calibration(b.calibration)
                    .build();
        } catch (RuntimeException e) {
            if (p != null) {
                p.close();
            }
            throw e;
        }
        this.precise = p;
        this.quantized = q;
        this.move = q.newReservation(1, b.quantizedPages);
    }

    public static Builder builder(Attn4j lib) {
        return new Builder(lib);
    }

    /** Configures a tiered cache; every setting is checked in {@link #build()}. */
    public static final class Builder {
        private final Attn4j lib;
        private int layers = 1;
        private int kvHeads = -1;
        private int headDim = -1;
        private int pageSize = 16;
        private int precisePages = -1;
        private int quantizedPages = -1;
        private KvFormat format;
        private Calibration calibration;
        private int sinks = 64;
        private int window = 256;

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

        /** Pages of each part: BF16 (sinks and windows of all sequences) and quantized. */
        public Builder numPages(int precisePages, int quantizedPages) {
            this.precisePages = precisePages;
            this.quantizedPages = quantizedPages;
            return this;
        }

        /** Format of the middle tokens: a quantized {@link KvFormat}. */
        public Builder format(KvFormat format) {
            this.format = format;
            return this;
        }

        /** Calibration for a {@link Rotation#CALIBRATED} format. */
        public Builder calibration(Calibration calibration) {
            this.calibration = calibration;
            return this;
        }

        /** Tokens kept in BF16 at the start of each sequence (default 64; a multiple of pageSize). */
        public Builder sinks(int sinks) {
            this.sinks = sinks;
            return this;
        }

        /** Most recent tokens kept in BF16 (default 256; at least this many). */
        public Builder window(int window) {
            this.window = window;
            return this;
        }

        public TieredKvCache build() {
            if (lib.device().kind() != Device.Kind.CPU) {
                throw new Attn4jException(Status.UNSUPPORTED, "lib: tiered KV caches run on CPU only (the CUDA decode "
                        + "reads one cache segment per run); on " + lib.device() + " use a PagedKvCache");
            }
            if (format == null || !format.isQuantized()) {
                throw Attn4jException.invalid("format: a tiered cache needs a quantized format (KvFormat.quantized), got "
                        + format);
            }
            if (pageSize <= 0) {
                throw Attn4jException.invalid("pageSize: must be > 0, got " + pageSize);
            }
            if (sinks < 0 || sinks % pageSize != 0) {
                throw Attn4jException.invalid("sinks: must be a non-negative multiple of pageSize " + pageSize
                        + ", got " + sinks);
            }
            if (window < 0) {
                throw Attn4jException.invalid("window: must be >= 0, got " + window);
            }
            return new TieredKvCache(this);
        }
    }

    /** The BF16 part: sink pages, then window pages, of every sequence. */
    public PagedKvCache precise() {
        return precise;
    }

    /** The quantized part: the middle tokens. */
    public PagedKvCache quantized() {
        return quantized;
    }

    public int sinks() {
        return sinks;
    }

    public int window() {
        return window;
    }

    public KvFormat format() {
        return quantized.format();
    }

    /** A new empty sequence (the same id in both parts). */
    public int newSequence() {
        int a = precise.newSequence();
        int b = quantized.newSequence();
        if (a != b) {
            precise.free(a);
            quantized.free(b);
            throw new Attn4jException(Status.INTERNAL, "cache: sequence ids of the two parts diverged (" + a + " vs "
                    + b + "); please report");
        }
        return a;
    }

    /**
     * A new sequence with the same tokens as {@code seq} in both parts (full pages shared, the
     * partial last page of each part copied; see {@link PagedKvCache#fork}).
     */
    public int fork(int seq) {
        int a = precise.fork(seq);
        int b;
        try {
            b = quantized.fork(seq);
        } catch (RuntimeException e) {
            precise.free(a);
            throw e;
        }
        if (a != b) {
            precise.free(a);
            quantized.free(b);
            throw new Attn4jException(Status.INTERNAL, "cache: sequence ids of the two parts diverged (" + a + " vs "
                    + b + "); please report");
        }
        return a;
    }

    /** Tokens in sequence {@code seq} (both parts). */
    public long length(int seq) {
        return precise.length(seq) + quantized.length(seq);
    }

    /** Tokens of sequence {@code seq} stored quantized. */
    public long quantizedLength(int seq) {
        return quantized.length(seq);
    }

    /** Releases sequence {@code seq} in both parts. */
    public void free(int seq) {
        precise.free(seq);
        quantized.free(seq);
    }

    /**
     * Moves aged window pages of {@code seqs} to the quantized part, then reserves
     * {@code counts} new tokens in the BF16 part (see {@link PagedKvCache#reserve(int[], int[],
     * PagedKvCache.Reservation)}); write each layer with {@link #write}.
     */
    public PagedKvCache.Reservation reserve(int[] seqs, int[] counts, PagedKvCache.Reservation into) {
        compact(seqs);
        return precise.reserve(seqs, counts, into);
    }

    /** As {@link #reserve(int[], int[], PagedKvCache.Reservation)}, allocating the reservation. */
    public PagedKvCache.Reservation reserve(int[] seqs, int[] counts) {
        compact(seqs);
        return precise.reserve(seqs, counts);
    }

    /** A reusable reservation for {@link #reserve(int[], int[], PagedKvCache.Reservation)}. */
    public PagedKvCache.Reservation newReservation(int maxBatch, int maxPages) {
        return precise.newReservation(maxBatch, maxPages);
    }

    /** Writes layer {@code layer}'s new K/V (BF16 part). */
    public void write(int layer, PagedKvCache.Reservation r, Tensor k, Tensor v) {
        precise.write(layer, r, k, v);
    }

    public void rollback(PagedKvCache.Reservation r) {
        precise.rollback(r);
    }

    /**
     * Moves every full window page beyond {@code window} tokens of {@code seqs} into the
     * quantized part, all layers at once. Called by {@link #reserve}; call it directly to compact
     * without reserving.
     */
    public void compact(int[] seqs) {
        if (seqs == null) {
            throw Attn4jException.invalid("seqs: null");
        }
        int ps = precise.pageSize();
        for (int i = 0; i < seqs.length; i++) {
            int seq = seqs[i];
            while (precise.length(seq) - sinks - ps >= window && precise.length(seq) - sinks >= ps) {
                movePage(seq);
            }
        }
    }

    private void movePage(int seq) {
        int ps = precise.pageSize();
        int page = precise.pageOf(seq, sinkPages);
        one[0] = seq;
        pageCount[0] = ps;
        quantized.reserve(one, pageCount, move);
        try {
            for (int l = 0; l < precise.layers(); l++) {
                quantized.writeFromPage(l, move, precise, page);
            }
        } catch (RuntimeException e) {
            quantized.rollback(move);
            throw e;
        }
        precise.dropFullPage(seq, sinkPages);
    }

    /** Page tables of both parts for a batch, refilled in place by {@link #fillTables}. */
    public static final class Tables {
        final PageTable quantized;
        final PageTable precise;

        private Tables(PageTable quantized, PageTable precise) {
            this.quantized = quantized;
            this.precise = precise;
        }

        public PageTable quantized() {
            return quantized;
        }

        public PageTable precise() {
            return precise;
        }
    }

    /** Tables with room for {@code maxBatch} sequences of up to {@code maxPages} pages per part. */
    public Tables newTables(int maxBatch, int maxPages) {
        Arena a = Arena.ofAuto();
        return new Tables(PageTable.allocate(a, maxBatch, maxPages), PageTable.allocate(a, maxBatch, maxPages));
    }

    /** Rewrites {@code tables} for {@code seqs} (allocates nothing). */
    public void fillTables(Tables tables, int[] seqs) {
        if (tables == null) {
            throw Attn4jException.invalid("tables: null");
        }
        quantized.fillPageTable(tables.quantized, seqs);
        precise.fillPageTable(tables.precise, seqs);
    }

    /** New tables for {@code seqs}. */
    public Tables tables(int... seqs) {
        return new Tables(quantized.pageTable(seqs), precise.pageTable(seqs));
    }

    @Override
    public void close() {
        precise.close();
        quantized.close();
    }
}
