/**
 * attn4j: fused attention kernels (paged decode, ragged prefill, state merging) for the JVM,
 * over off-heap {@link java.lang.foreign.MemorySegment}s. Needs
 * {@code --enable-native-access=org.attn4j} (or {@code ALL-UNNAMED} on the class path).
 */
module org.attn4j {
    exports org.attn4j;
    exports org.attn4j.quant;
}
