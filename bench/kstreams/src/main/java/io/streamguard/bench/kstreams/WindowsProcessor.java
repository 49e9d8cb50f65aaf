package io.streamguard.bench.kstreams;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.streamguard.bench.kstreams.Spec.Branch;
import java.util.List;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The windows of one entity kind, on events keyed by that entity: per event, the entity's record is
 * read from the store, each branch the event's type falls in counts it and writes one record (keyed by
 * the event id: its count and distinct counts over the window that ends at it), and the record goes
 * back to the store.
 */
final class WindowsProcessor implements Processor<String, Event, String, String> {
  private static final ObjectMapper JSON = new ObjectMapper();

  private final List<Branch> branches;
  private final String storeName;
  private final int cap;
  private ProcessorContext<String, String> context;
  private KeyValueStore<String, EntityWindows> store;

  WindowsProcessor(List<Branch> branches, String storeName, int cap) {
    this.branches = branches;
    this.storeName = storeName;
    this.cap = cap;
  }

  @Override
  public void init(ProcessorContext<String, String> context) {
    this.context = context;
    this.store = context.getStateStore(storeName);
  }

  @Override
  public void process(Record<String, Event> record) {
    Event event = record.value();
    EntityWindows windows = store.get(record.key());
    if (windows == null) {
      windows = EntityWindows.empty(branches);
    }
    for (int i = 0; i < branches.size(); i++) {
      Branch branch = branches.get(i);
      if (branch.events().contains(event.type())) {
        String summary = count(branch, windows.rings()[i], event);
        context.forward(new Record<>(event.id(), summary, record.timestamp()));
      }
    }
    store.put(record.key(), windows);
  }

  private String count(Branch branch, Ring ring, Event event) {
    long bucket = Math.floorDiv(event.ts(), branch.stepMs());
    String[] values = branch.distinct().stream().map(event::field).toArray(String[]::new);
    ring.add(bucket, values, cap);
    ObjectNode summary = JSON.createObjectNode()
        .put("event_id", event.id())
        .put("branch", branch.name())
        .put("count", ring.count(bucket));
    for (int f = 0; f < values.length; f++) {
      summary.put("distinct_" + branch.distinct().get(f), ring.distinct(f, bucket));
    }
    return summary.toString();
  }
}
