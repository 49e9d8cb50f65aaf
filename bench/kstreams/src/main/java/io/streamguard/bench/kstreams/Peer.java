package io.streamguard.bench.kstreams;

import io.streamguard.bench.kstreams.Spec.Branch;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.stream.Collectors;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer of {@code streamguard bench}: the windows of the spec, exactly-once, state in
 * RocksDB.
 *
 * <p>The contract's input topics are read as one stream on the event's {@code ts}. Per entity kind
 * (IP, device, account, phone), the events of the types its branches read that have the entity are
 * re-keyed by it through a repartition topic, and a {@link WindowsProcessor} keeps each entity's
 * buckets in a persistent (RocksDB, cached, changelogged) key-value store and writes one record per
 * (event, branch) to the output topic.
 */
public final class Peer {
  private Peer() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      System.err.println("usage: java -jar peer.jar SPEC.json (written by streamguard.bench.peer_spec)");
      System.exit(2);
    }
    Spec spec = Spec.read(Path.of(args[0]));
    KafkaStreams streams = new KafkaStreams(topology(spec), properties(spec));
    CountDownLatch stopped = new CountDownLatch(1);
    streams.setStateListener((now, before) -> {
      if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) {
        stopped.countDown();
      }
    });
    // A failed thread stops the peer, so that the bench sees it exit instead of waiting for output.
    streams.setUncaughtExceptionHandler(e -> StreamThreadExceptionResponse.SHUTDOWN_CLIENT);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(30))));
    streams.start();
    stopped.await();
    if (streams.state() == KafkaStreams.State.ERROR) {
      System.exit(1);
    }
  }

  static Topology topology(Spec spec) {
    StreamsBuilder builder = new StreamsBuilder();
    Serde<Event> events = Event.serde(spec.fields());
    // The deserialized event reaches the extractor, so its `ts` costs no second parse.
    Consumed<byte[], Event> consumed = Consumed.with(Serdes.ByteArray(), events)
        .withTimestampExtractor((record, partitionTime) -> ((Event) record.value()).ts());
    KStream<byte[], Event> input = builder.stream(spec.inputTopics(), consumed);
    spec.byEntity().forEach((entity, branches) -> {
      String store = entity + "-windows";
      builder.addStateStore(Stores.keyValueStoreBuilder(
              Stores.persistentKeyValueStore(store), Serdes.String(), EntityWindows.serde(branches))
          .withCachingEnabled());
      Set<String> types = branchTypes(branches);
      input
          .filter((key, event) -> types.contains(event.type()) && event.field(entity) != null,
              Named.as("has-" + entity))
          .selectKey((key, event) -> event.field(entity), Named.as("key-by-" + entity))
          .repartition(Repartitioned.with(Serdes.String(), events).withName("by-" + entity))
          .process(() -> new WindowsProcessor(branches, store, spec.distinctCap()), Named.as(store), store)
          .to(spec.outputTopic(), Produced.with(Serdes.String(), Serdes.String()));
    });
    return builder.build();
  }

  private static Set<String> branchTypes(List<Branch> branches) {
    return branches.stream().flatMap(b -> b.events().stream()).collect(Collectors.toSet());
  }

  static Properties properties(Spec spec) {
    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, spec.group());
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, spec.bootstrap());
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Math.round(spec.commitIntervalS() * 1000));
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Math.max(1, spec.streamThreads()));
    props.put(StreamsConfig.STATE_DIR_CONFIG, spec.stateDir());
    props.put(StreamsConfig.TOPOLOGY_OPTIMIZATION_CONFIG, StreamsConfig.OPTIMIZE);
    return props;
  }
}
