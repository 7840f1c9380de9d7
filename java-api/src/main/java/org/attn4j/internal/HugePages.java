package org.attn4j.internal;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.Locale;

/**
 * Large off-heap slabs (the paged KV pools) backed by transparent huge pages on Linux: an
 * anonymous mmap advised with MADV_HUGEPAGE before first touch. Paged KV is read in scattered
 * page-sized pieces; with 4 KiB pages nearly every piece costs a TLB miss. Falls back to
 * {@link Arena#allocate} elsewhere or when mmap fails.
 */
public final class HugePages {
    /** Slabs smaller than one huge page are allocated normally. */
    public static final long HUGE_PAGE = 2L << 20;
    private static final int PROT_READ_WRITE = 0x3;
    private static final int MAP_PRIVATE_ANONYMOUS = 0x22;
    private static final int MADV_HUGEPAGE = 14;
    private static final MethodHandle MMAP;
    private static final MethodHandle MUNMAP;
    private static final MethodHandle MADVISE;

    static {
        MethodHandle mmap = null, munmap = null, madvise = null;
        if (System.getProperty("os.name", "").toLowerCase(Locale.ROOT).contains("linux")) {
            Linker linker = Linker.nativeLinker();
            SymbolLookup libc = linker.defaultLookup();
            ValueLayout.OfLong size = ValueLayout.JAVA_LONG;
            mmap = libc.find("mmap").map(s -> linker.downcallHandle(s, FunctionDescriptor.of(ValueLayout.ADDRESS,
                    ValueLayout.ADDRESS, size, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT,
                    size))).orElse(null);
            munmap = libc.find("munmap").map(s -> linker.downcallHandle(s, FunctionDescriptor.of(ValueLayout.JAVA_INT,
                    ValueLayout.ADDRESS, size))).orElse(null);
            madvise = libc.find("madvise").map(s -> linker.downcallHandle(s, FunctionDescriptor.of(
                    ValueLayout.JAVA_INT, ValueLayout.ADDRESS, size, ValueLayout.JAVA_INT))).orElse(null);
        }
        boolean all = mmap != null && munmap != null && madvise != null;
        MMAP = all ? mmap : null;
        MUNMAP = all ? munmap : null;
        MADVISE = all ? madvise : null;
    }

    private HugePages() {}

    /**
     * A zeroed, 64-byte (at least) aligned slab of {@code bytes} owned by {@code arena}: unmapped
     * when the arena closes.
     */
    public static MemorySegment allocate(Arena arena, long bytes) {
        if (MMAP == null || bytes < HUGE_PAGE) {
            return arena.allocate(bytes, 64);
        }
        try {
            MemorySegment p = (MemorySegment) MMAP.invokeExact(MemorySegment.NULL, bytes, PROT_READ_WRITE,
                    MAP_PRIVATE_ANONYMOUS, -1, 0L);
            if (p.address() == -1L || p.address() == 0L) {
                return arena.allocate(bytes, 64);
            }
            int ignored = (int) MADVISE.invokeExact(p, bytes, MADV_HUGEPAGE);
            return p.reinterpret(bytes, arena, unmapper(bytes));
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            return arena.allocate(bytes, 64);
        }
    }

    private static java.util.function.Consumer<MemorySegment> unmapper(long bytes) {
        return segment -> {
            try {
                int ignored = (int) MUNMAP.invokeExact(segment, bytes);
            } catch (Throwable t) {
                // nothing sensible to do while an arena closes
            }
        };
    }
}
