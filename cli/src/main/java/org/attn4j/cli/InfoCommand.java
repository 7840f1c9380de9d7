package org.attn4j.cli;

import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;

import org.attn4j.Attn4j;
import org.attn4j.Attn4jException;

import picocli.CommandLine.Command;

/** {@code attn4j info}: which library loaded, its ABI and build, the CPU path, the devices. */
@Command(name = "info", mixinStandardHelpOptions = true,
        description = "Show the loaded native library, ABI version, build info, CPU features and devices.")
final class InfoCommand implements Callable<Integer> {
    @Override
    public Integer call() {
        int abi = Attn4j.abiVersion(); // loads the library (and checks the ABI)
        System.out.println("attn4j");
        List<String> libs = SystemInfo.loadedLibraries();
        System.out.println("  library        " + (libs.isEmpty() ? "(unknown)" : libs.get(0)));
        for (int i = 1; i < libs.size(); i++) {
            System.out.println("                 " + libs.get(i));
        }
        System.out.println("  ABI version    " + abi);
        System.out.println("  build");
        for (Map.Entry<String, String> e : SystemInfo.buildInfo().entrySet()) {
            System.out.printf("    %-20s %s%n", e.getKey(), e.getValue());
        }
        System.out.println("  cpu            " + Attn4j.cpuInfo());
        System.out.println("  cpu model      " + SystemInfo.cpuModel() + ", "
                + Runtime.getRuntime().availableProcessors() + " cores available, LLC "
                + mib(SystemInfo.lastLevelCacheBytes()));
        String cuda;
        try {
            cuda = Integer.toString(Attn4j.cudaDeviceCount());
        } catch (Attn4jException e) {
            cuda = "error: " + e.getMessage();
        }
        System.out.println("  CUDA devices   " + cuda);
        System.out.println("  JDK            " + SystemInfo.jdk());
        return 0;
    }

    static String mib(long bytes) {
        return bytes < 0 ? "unknown" : (bytes / (1024 * 1024)) + " MiB";
    }
}
