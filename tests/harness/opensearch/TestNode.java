package p88.testnode;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * A single-node OpenSearch 2.19 server started straight from the Maven jars, for p88backup's tests.
 *
 * <p>Usage: {@code TestNode --home DIR [--port N] [--exit-on-stdin-eof] [-Ekey=value ...]}. Port 0 binds a
 * free port, written to {@code DIR/logs/http.ports} once bound. {@code -E} settings are applied last, so they
 * override every default below. With {@code --exit-on-stdin-eof} the node shuts down when its stdin closes,
 * i.e. when the parent that holds the other end dies, even by SIGKILL.
 *
 * <p>This bypasses {@code org.opensearch.bootstrap.OpenSearch}: no bootstrap checks, no JarHell, no security
 * manager, no keystore, no uncaught-exception handler. Plugins come from the classpath, because
 * {@code Node}'s protected constructor is the only way to load them without a plugins directory holding
 * their descriptors.
 */
public final class TestNode extends Node {

    /** The HTTP layer: the one plugin the node cannot do without. */
    private static final String HTTP_PLUGIN = "org.opensearch.transport.Netty4Plugin";

    /** Plugin classes loaded when their jar is on the classpath, so that pom.xml alone decides the plugin set. */
    private static final List<String> KNOWN_PLUGINS = List.of(
        HTTP_PLUGIN,
        "org.opensearch.analysis.common.CommonAnalysisPlugin",
        "org.opensearch.index.mapper.MapperExtrasPlugin",
        "org.opensearch.index.reindex.ReindexPlugin",
        "org.opensearch.painless.PainlessPlugin",
        "org.opensearch.join.ParentJoinPlugin"
    );

    private static final long CLOSE_TIMEOUT_SECONDS = 20;

    private TestNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
        super(environment, plugins, true);
    }

    public static void main(String[] args) throws Exception {
        Path home = null;
        String port = null;
        boolean exitOnStdinEof = false;
        Settings.Builder overrides = Settings.builder();
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            if (arg.equals("--home") && i + 1 < args.length) {
                home = Paths.get(args[++i]);
            } else if (arg.equals("--port") && i + 1 < args.length) {
                port = args[++i];
            } else if (arg.equals("--exit-on-stdin-eof")) {
                exitOnStdinEof = true;
            } else if (arg.startsWith("-E") && arg.indexOf('=') > 2) {
                int eq = arg.indexOf('=');
                overrides.put(arg.substring(2, eq), arg.substring(eq + 1));
            } else {
                usage("unexpected argument: " + arg);
            }
        }
        if (home == null) {
            usage("--home is required");
        }

        home = home.toAbsolutePath();
        Path config = home.resolve("config");
        // The layout of an installed node, for any code that looks there; 2.19.6 also starts without them.
        Files.createDirectories(home.resolve("plugins"));
        Files.createDirectories(home.resolve("modules"));
        Files.createDirectories(config);
        Files.createDirectories(home.resolve("logs"));
        // A node refuses a data path another node holds (node lock) and would replay old cluster state from
        // a used one; a new directory per run rules out both.
        Path data = Files.createTempDirectory(Files.createDirectories(home.resolve("data")), "run-");

        Settings.Builder builder = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", data.toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "p88-test")
            .put("node.name", "p88-test-node")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            // Tests must not go read-only because the developer's disk is 90% full.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            // logs/http.ports tells the caller the bound port, which it needs after asking for port 0.
            .put("node.portsfile", true);
        if (port != null) {
            builder.put("http.port", port);
        }
        builder.put(overrides.build());
        Settings settings = builder.build();

        String nodeName = settings.get("node.name");
        Environment environment =
            InternalSettingsPreparer.prepareEnvironment(settings, Collections.emptyMap(), config, () -> nodeName);
        TestNode node = new TestNode(environment, classpathPlugins());

        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                if (!node.awaitClose(CLOSE_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
                    System.err.println("TestNode: node did not close within " + CLOSE_TIMEOUT_SECONDS + "s");
                }
            } catch (IOException | InterruptedException e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "p88-testnode-shutdown"));

        if (exitOnStdinEof) {
            Thread watcher = new Thread(TestNode::exitOnStdinEof, "p88-testnode-stdin");
            watcher.setDaemon(true);
            watcher.start();
        }
        try {
            node.start();
        } catch (Exception e) {
            e.printStackTrace();
            // Runs the shutdown hook, which closes whatever the node had started.
            System.exit(1);
        }
        // The node's own threads are daemon threads: without this wait the JVM would exit right away.
        closed.await();
    }

    private static List<Class<? extends Plugin>> classpathPlugins() {
        List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String name : KNOWN_PLUGINS) {
            try {
                plugins.add(Class.forName(name).asSubclass(Plugin.class));
            } catch (ClassNotFoundException e) {
                if (name.equals(HTTP_PLUGIN)) {
                    throw new IllegalStateException("transport-netty4-client is not on the classpath", e);
                }
            }
        }
        return plugins;
    }

    private static void exitOnStdinEof() {
        try {
            while (System.in.read() != -1) {
                // Only the end of the stream matters.
            }
        } catch (IOException e) {
            // A broken stdin means the parent is gone, just like EOF.
        }
        System.exit(0);
    }

    private static void usage(String problem) {
        System.err.println("TestNode: " + problem);
        System.err.println("usage: TestNode --home DIR [--port N] [--exit-on-stdin-eof] [-Ekey=value ...]");
        System.exit(2);
    }
}
