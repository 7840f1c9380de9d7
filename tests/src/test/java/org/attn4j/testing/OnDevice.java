package org.attn4j.testing;

import java.lang.foreign.Arena;

import org.attn4j.Attn4j;
import org.attn4j.DeviceArena;
import org.attn4j.PageTable;
import org.attn4j.Tensor;

/**
 * Moves host test data to an {@link Attn4j}'s device and back, so one test body runs on CPU and
 * CUDA. On CPU every method hands back the host tensor itself and copies nothing.
 */
public final class OnDevice implements AutoCloseable {
    private final Attn4j lib;
    private final DeviceArena arena;

    private OnDevice(Attn4j lib) {
        this.lib = lib;
        this.arena = lib.device().kind() == org.attn4j.Device.Kind.CPU ? null : lib.newDeviceArena();
    }

    public static OnDevice of(Attn4j lib) {
        return new OnDevice(lib);
    }

    /** {@code host} on the device (a copy), or {@code host} itself on CPU. */
    public Tensor put(Tensor host) {
        if (arena == null) {
            return host;
        }
        Tensor d = Tensor.allocate(arena, host.dtype(), host.shape());
        lib.copy(host, d);
        return d;
    }

    /** Copies {@code device} (made by {@link #put}) back into {@code host}; nothing on CPU. */
    public void get(Tensor device, Tensor host) {
        if (device != host) {
            lib.copy(device, host);
        }
    }

    /** Copies {@code host} into {@code device} (made by {@link #put}) again, e.g. after poisoning it. */
    public void refresh(Tensor host, Tensor device) {
        if (device != host) {
            lib.copy(host, device);
        }
    }

    /** An empty page table where the kernels of {@code lib} read tables. */
    public PageTable pageTable(Arena hostArena, int maxBatch, int maxPages) {
        return arena == null ? PageTable.allocate(hostArena, maxBatch, maxPages)
                : PageTable.allocate(arena, maxBatch, maxPages);
    }

    @Override
    public void close() {
        if (arena != null) {
            arena.close();
        }
    }
}
