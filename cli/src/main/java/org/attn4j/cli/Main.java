package org.attn4j.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** The {@code attn4j} command: {@code info}, {@code bench}, {@code verify}, {@code calibrate}. */
@Command(name = "attn4j", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = "Fused attention kernels for the JVM: library info, benchmarks, verification, KV calibration.",
        subcommands = {InfoCommand.class, BenchCommand.class, VerifyCommand.class, CalibrateCommand.class,
                CommandLine.HelpCommand.class})
public final class Main implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    public static void main(String[] args) {
        // XChart draws through AWT; never try to open a display.
        System.setProperty("java.awt.headless", "true");
        int code = new CommandLine(new Main())
                .setExecutionExceptionHandler(Main::handle)
                .execute(args);
        System.exit(code);
    }

    @Override
    public void run() {
        spec.commandLine().usage(System.out);
    }

    private static int handle(Exception e, CommandLine cmd, CommandLine.ParseResult parsed) {
        String msg = e.getMessage() == null ? e.toString() : e.getMessage();
        cmd.getErr().println("attn4j " + cmd.getCommandName() + ": " + e.getClass().getSimpleName() + ": " + msg);
        if (Boolean.getBoolean("attn4j.debug")) {
            e.printStackTrace(cmd.getErr());
        } else {
            cmd.getErr().println("(run with -Dattn4j.debug=true for the stack trace)");
        }
        return 2;
    }

    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            String v = Main.class.getPackage().getImplementationVersion();
            return new String[] {"attn4j-cli " + (v == null ? "0.1.0-SNAPSHOT" : v)};
        }
    }
}
