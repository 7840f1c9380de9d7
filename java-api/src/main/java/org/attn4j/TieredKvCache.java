package org.attn4j;

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
 *
 * <p>On a CUDA {@link Attn4j} every part is device memory; a move is a device-to-device append
 * (quantize-on-write on the GPU, which synchronizes like {@link PagedKvCache#write}), and decode
 * runs one kernel per part and merges them by LSE on the GPU (the CPU does all parts in one pass).
 *
 * <p><b>Salient tokens</b> ({@link Builder#salient}, ZipCache-style): a third, BF16 part keeps the
 * middle tokens that recent queries attended to. Each tiered decode run records its queries and
 * their log-sum-exp as probes (the last {@link Builder#probes} per sequence and layer; for a
 * prompt, give its last queries with {@link #observe}). When window pages move, their tokens are
 * scored by the attention probability the probes gave them, relative to a uniform share (averaged
 * over probes, query heads and layers); tokens above the uniform share are kept in BF16, the
 * highest first, while the salient part holds at most {@code fraction} of the sequence's middle
 * tokens (unused budget carries over to later moves). A token slot holds every layer and KV head,
 * so the choice is made for all of them at once. Decode then reads three segments.
 */
public final class TieredKvCache implements AutoCloseable {
    private final PagedKvCache precise;
    private final PagedKvCache quantized;
    private final PagedKvCache salient; // null unless Builder.salient
    private final TokenSalience salience; // null unless Builder.salient
    private final double salientFraction;
    private final int sinks;
    private final int window;
    private final int sinkPages;
    private final PagedKvCache.Reservation move;
    private final PagedKvCache.Reservation moveSalient;
    private final int[] one = new int[1];
    private final int[] pageCount = new int[1];
    private float[] scores = new float[0]; // salience of the tokens moving, grown as needed
    private float[] ranked = new float[0];
    private final int[] keep; // indices of one page's salient tokens (movePage)
    private final int[] rest; // and of its other tokens

    private TieredKvCache(Builder b) {
        this.sinks = b.sinks;
        this.window = b.window;
        this.sinkPages = b.sinks / b.pageSize;
        PagedKvCache p = null;
        PagedKvCache q = null;
        PagedKvCache s = null;
        try {
            p = PagedKvCache.builder(b.lib).layers(b.layers).kvHeads(b.kvHeads).headDim(b.headDim)
                    .pageSize(b.pageSize).numPages(b.precisePages).dtype(DType.BF16).build();
            q = PagedKvCache.builder(b.lib).layers(b.layers).kvHeads(b.kvHeads).headDim(b.headDim)
                    .pageSize(b.pageSize).numPages(b.quantizedPages).format(b.format).calibration(b.calibration)
                    .build();
            if (b.salientPages > 0) {
                s = PagedKvCache.builder(b.lib).layers(b.layers).kvHeads(b.kvHeads).headDim(b.headDim)
                        .pageSize(b.pageSize).numPages(b.salientPages).dtype(DType.BF16).build();
            }
        } catch (RuntimeException e) {
            for (PagedKvCache c : new PagedKvCache[] {p, q}) {
                if (c != null) {
                    c.close();
                }
            }
            throw e;
        }
        this.precise = p;
        this.quantized = q;
        this.salient = s;
        this.salientFraction = b.salientFraction;
        this.salience = s == null ? null : new TokenSalience(b.layers, b.kvHeads, b.headDim, b.pageSize, b.probes);
        // One page id more than the part holds, so a full part fails as out of pages, not as a small reservation.
        this.move = q.newReservation(1, b.quantizedPages + 1);
        this.moveSalient = s == null ? null : s.newReservation(1, b.salientPages + 1);
        this.keep = new int[b.pageSize];
        this.rest = new int[b.pageSize];
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
        private double salientFraction;
        private int salientPages;
        private int probes = 16;

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

        /**
         * Keeps salient middle tokens in BF16 (see the class comment): at most {@code fraction}
         * (0 < fraction <= 1; 0.05 is a good start) of each sequence's middle tokens, in a third
         * part of {@code pages} BF16 pages shared by all sequences.
         */
        public Builder salient(double fraction, int pages) {
            this.salientFraction = fraction;
            this.salientPages = pages;
            return this;
        }

        /** Probe queries remembered per sequence and layer for {@link #salient} (default 16; each costs qoHeads x headDim floats per layer and sequence). */
        public Builder probes(int probes) {
            this.probes = probes;
            return this;
        }

        public TieredKvCache build() {
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
            if ((salientPages != 0 || salientFraction != 0) && lib.device().kind() != Device.Kind.CPU) {
                throw new Attn4jException(Status.UNSUPPORTED, "salient: salient tokens are scored from host pages, "
                        + "on CPU only in this release; on " + lib.device() + " build the tiered cache without them");
            }
            if (salientPages != 0 || salientFraction != 0) {
                if (!(salientFraction > 0 && salientFraction <= 1)) {
                    throw Attn4jException.invalid("salient: fraction must be in (0, 1], got " + salientFraction);
                }
                if (salientPages <= 0) {
                    throw Attn4jException.invalid("salient: pages must be > 0, got " + salientPages);
                }
            }
            if (probes <= 0 || probes > 1024) {
                throw Attn4jException.invalid("probes: must be in 1..1024, got " + probes);
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

    /** The salient part (BF16 middle tokens), or null when {@link Builder#salient} is off. */
    public PagedKvCache salient() {
        return salient;
    }

    /** The most middle tokens of a sequence kept in BF16, as a fraction (0 when salient tokens are off). */
    public double salientFraction() {
        return salientFraction;
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
        int c = salient == null ? a : salient.newSequence();
        if (a != b || a != c) {
            precise.free(a);
            quantized.free(b);
            if (salient != null) {
                salient.free(c);
            }
            throw diverged(a, b, c);
        }
        if (salience != null) {
            salience.clear(a);
        }
        return a;
    }

    private static Attn4jException diverged(int a, int b, int c) {
        return new Attn4jException(Status.INTERNAL, "cache: sequence ids of the parts diverged (" + a + ", " + b
                + ", " + c + "); please report");
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
        int c = a;
        if (salient != null) {
            try {
                c = salient.fork(seq);
            } catch (RuntimeException e) {
                precise.free(a);
                quantized.free(b);
                throw e;
            }
        }
        if (a != b || a != c) {
            precise.free(a);
            quantized.free(b);
            if (salient != null) {
                salient.free(c);
            }
            throw diverged(a, b, c);
        }
        if (salience != null) {
            salience.copy(seq, a);
        }
        return a;
    }

    /** Tokens in sequence {@code seq} (all parts). */
    public long length(int seq) {
        return precise.length(seq) + quantized.length(seq) + salientLength(seq);
    }

    /** Tokens of sequence {@code seq} stored quantized. */
    public long quantizedLength(int seq) {
        return quantized.length(seq);
    }

    /**
     * Bytes the tokens of sequence {@code seq} take in one layer, K and V, every part (BF16 sinks,
     * window and salient tokens, quantized middle with its scales and zeros; not counting the
     * unused rest of partly filled pages): divided by {@link #length}, the bytes per token this
     * sequence's mix of precisions costs.
     */
    public long bytesOf(int seq) {
        return precise.length(seq) * precise.bytesPerToken() + quantized.length(seq) * quantized.bytesPerToken()
                + salientLength(seq) * (salient == null ? 0 : salient.bytesPerToken());
    }

    /** Middle tokens of sequence {@code seq} kept in BF16 as salient (0 when salient tokens are off). */
    public long salientLength(int seq) {
        return salient == null ? 0 : salient.length(seq);
    }

    /** Releases sequence {@code seq} in every part. */
    public void free(int seq) {
        precise.free(seq);
        quantized.free(seq);
        if (salient != null) {
            salient.free(seq);
            salience.clear(seq);
        }
    }

    /**
     * Gives the salient-token scoring probes for a prompt: {@code q} ([n, qoHeads, headDim], host)
     * are the queries of the last n tokens of sequence {@code seq} at layer {@code layer}, and
     * {@code lse} (F32 [n, qoHeads]) the log-sum-exp of their attention under softmax scale
     * {@code scale}, as a prefill plan writes it. The last {@link Builder#probes} of them are kept
     * (decode runs add theirs). Needs {@link Builder#salient}.
     */
    public void observe(int seq, int layer, Tensor q, Tensor lse, float scale) {
        if (salience == null) {
            throw Attn4jException.invalid("cache: salient tokens are off (TieredKvCache.Builder.salient)");
        }
        if (layer < 0 || layer >= precise.layers()) {
            throw Attn4jException.invalid("layer: " + layer + " outside [0, " + precise.layers() + ")");
        }
        long len = length(seq);
        if (q == null || !q.isHost() || q.rank() != 3 || q.shape(2) != precise.headDim() || q.shape(0) <= 0
                || q.dtype().isQuantized() || q.dtype() == DType.I32) {
            throw Attn4jException.invalid("q: need a host float tensor [n, qoHeads, " + precise.headDim() + "], got "
                    + q);
        }
        long n = q.shape(0);
        if (q.shape(1) % precise.kvHeads() != 0) {
            throw Attn4jException.invalid("q: " + q.shape(1) + " query heads, not a multiple of " + precise.kvHeads()
                    + " KV heads");
        }
        if (n > len) {
            throw Attn4jException.invalid("q: " + n + " queries, but sequence " + seq + " has " + len + " tokens");
        }
        if (lse == null || !lse.isHost() || lse.dtype() != DType.F32 || lse.rank() != 2 || lse.shape(0) != n
                || lse.shape(1) != q.shape(1)) {
            throw Attn4jException.invalid("lse: need a host F32 tensor [" + n + ", " + q.shape(1) + "], got " + lse);
        }
        if (!(scale > 0) || Float.isInfinite(scale)) {
            throw Attn4jException.invalid("scale: must be finite and > 0, got " + scale);
        }
        for (long i = Math.max(0, n - salience.probes()); i < n; i++) {
            salience.record(seq, layer, q, lse, i, scale, len - n + i + 1);
        }
    }

    /** Records decode row {@code row} of sequence {@code seq} as a probe (no-op without salient tokens). */
    void recordDecode(int seq, int layer, Tensor q, Tensor lse, long row, float scale) {
        if (salience != null) {
            salience.record(seq, layer, q, lse, row, scale, length(seq));
        }
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
     * quantized part (its salient tokens into the salient part), all layers at once; a move that
     * fails (a part out of pages) leaves that page in the window. Called by {@link #reserve}; call it directly to compact
     * without reserving.
     */
    public void compact(int[] seqs) {
        if (seqs == null) {
            throw Attn4jException.invalid("seqs: null");
        }
        int ps = precise.pageSize();
        for (int i = 0; i < seqs.length; i++) {
            int seq = seqs[i];
            long len = precise.length(seq);
            int pages = 0;
            while (len - sinks - ps >= window && len - sinks >= ps) {
                len -= ps;
                pages++;
            }
            if (pages == 0) {
                continue;
            }
            int salientTokens = salience == null ? 0 : chooseSalient(seq, pages);
            for (int j = 0; j < pages; j++) {
                movePage(seq, j, salientTokens > 0);
            }
        }
    }

    /**
     * Scores the tokens of the oldest {@code pages} window pages of {@code seq} into
     * {@code scores} and marks the ones to keep as salient with a positive score (the others 0);
     * returns how many.
     */
    private int chooseSalient(int seq, int pages) {
        int ps = precise.pageSize();
        int n = pages * ps;
        if (scores.length < n) {
            scores = new float[n];
            ranked = new float[n];
        }
        java.util.Arrays.fill(scores, 0, n, 0f);
        long first = sinks + quantized.length(seq) + salient.length(seq);
        for (int l = 0; l < precise.layers(); l++) {
            for (int j = 0; j < pages; j++) {
                salience.addScores(seq, l, precise, precise.pageOf(seq, sinkPages + j), first + (long) j * ps, scores,
                        j * ps);
            }
        }
        long kept = salient.length(seq);
        long budget = (long) Math.floor(salientFraction * (quantized.length(seq) + kept + n)) - kept;
        // Candidates score above a uniform share (1); keep the best `budget` of them.
        int candidates = 0;
        for (int t = 0; t < n; t++) {
            if (scores[t] > 1f) {
                ranked[candidates++] = scores[t];
            } else {
                scores[t] = 0f;
            }
        }
        int chosen = (int) Math.min(budget, candidates);
        if (chosen <= 0) {
            java.util.Arrays.fill(scores, 0, n, 0f);
            return 0;
        }
        java.util.Arrays.sort(ranked, 0, candidates);
        float cut = ranked[candidates - chosen];
        int left = chosen;
        for (int t = 0; t < n; t++) {
            if (scores[t] >= cut && left > 0) {
                left--;
            } else {
                scores[t] = 0f;
            }
        }
        return chosen;
    }

    /**
     * Moves the oldest window page of {@code seq} (page {@code j} of the tokens scored by
     * {@link #chooseSalient} when {@code split}) to the quantized part, its salient tokens to the
     * salient part; all layers, all or nothing.
     */
    private void movePage(int seq, int j, boolean split) {
        int ps = precise.pageSize();
        int page = precise.pageOf(seq, sinkPages);
        int kept = 0;
        int others = 0;
        if (split) {
            for (int t = 0; t < ps; t++) {
                if (scores[j * ps + t] > 0f) {
                    keep[kept++] = t;
                } else {
                    rest[others++] = t;
                }
            }
        } else {
            others = ps;
        }
        one[0] = seq;
        boolean quantizedReserved = false;
        boolean salientReserved = false;
        try {
            if (others > 0) {
                pageCount[0] = others;
                quantized.reserve(one, pageCount, move);
                quantizedReserved = true;
            }
            if (kept > 0) {
                pageCount[0] = kept;
                salient.reserve(one, pageCount, moveSalient);
                salientReserved = true;
            }
            for (int l = 0; l < precise.layers(); l++) {
                if (others > 0) {
                    quantized.writeFromPage(l, move, precise, page, kept == 0 ? null : rest, others);
                }
                if (kept > 0) {
                    salient.writeFromPage(l, moveSalient, precise, page, keep, kept);
                }
            }
        } catch (RuntimeException e) {
            if (quantizedReserved) {
                quantized.rollback(move);
            }
            if (salientReserved) {
                salient.rollback(moveSalient);
            }
            throw e;
        }
        precise.dropFullPage(seq, sinkPages);
    }

    /**
     * Page tables of every part for a batch, refilled in place by {@link #fillTables}; they also
     * remember the batch's sequence ids (decode records its salient-token probes by them).
     */
    public static final class Tables {
        final TieredKvCache owner;
        final PageTable quantized;
        final PageTable precise;
        final PageTable salient; // null without salient tokens
        final int[] seqs;
        int batch;

        private Tables(TieredKvCache owner, PageTable quantized, PageTable precise, PageTable salient, int maxBatch) {
            this.owner = owner;
            this.quantized = quantized;
            this.precise = precise;
            this.salient = salient;
            this.seqs = new int[maxBatch];
        }

        public PageTable quantized() {
            return quantized;
        }

        public PageTable precise() {
            return precise;
        }

        /** The salient part's table, or null when salient tokens are off. */
        public PageTable salient() {
            return salient;
        }
    }

    /**
     * Tables with room for {@code maxBatch} sequences of up to {@code maxPages} pages per part, on
     * the cache's device (CUDA tables are held until the cache closes: make them once, refill them
     * with {@link #fillTables}).
     */
    public Tables newTables(int maxBatch, int maxPages) {
        return new Tables(this, quantized.newTable(maxBatch, maxPages), precise.newTable(maxBatch, maxPages),
                salient == null ? null : salient.newTable(maxBatch, maxPages), maxBatch);
    }

    /** Rewrites {@code tables} for {@code seqs} (allocates nothing). */
    public void fillTables(Tables tables, int[] seqs) {
        if (tables == null) {
            throw Attn4jException.invalid("tables: null");
        }
        if (tables.owner != this) {
            throw Attn4jException.invalid("tables: made by another tiered cache");
        }
        if (seqs == null || seqs.length > tables.seqs.length) {
            throw Attn4jException.invalid("seqs: " + (seqs == null ? "null" : seqs.length + " sequences exceed the "
                    + "tables' maxBatch " + tables.seqs.length));
        }
        quantized.fillPageTable(tables.quantized, seqs);
        precise.fillPageTable(tables.precise, seqs);
        if (salient != null) {
            salient.fillPageTable(tables.salient, seqs);
        }
        System.arraycopy(seqs, 0, tables.seqs, 0, seqs.length);
        tables.batch = seqs.length;
    }

    /** New tables for {@code seqs}. */
    public Tables tables(int... seqs) {
        Tables t = new Tables(this, quantized.pageTable(seqs), precise.pageTable(seqs),
                salient == null ? null : salient.pageTable(seqs), seqs.length);
        System.arraycopy(seqs, 0, t.seqs, 0, seqs.length);
        t.batch = seqs.length;
        return t;
    }

    @Override
    public void close() {
        precise.close();
        quantized.close();
        if (salient != null) {
            salient.close();
        }
    }
}
