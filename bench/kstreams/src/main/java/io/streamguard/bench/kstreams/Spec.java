package io.streamguard.bench.kstreams;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The JSON document that {@code streamguard.bench.peer_spec} writes: the topics, and one branch per
 * (entity, window) that streamguard's {@code features/*.toml} declare. The Quix peer reads the same one.
 */
record Spec(
    String bootstrap,
    String group,
    List<String> inputTopics,
    String outputTopic,
    String stateDir,
    double commitIntervalS,
    int distinctCap,
    int streamThreads,
    List<Branch> branches) {

  /** Events of {@code events} that have {@code entity}: counted, with the distinct values of each field. */
  record Branch(String name, String entity, long windowMs, long stepMs, List<String> events, List<String> distinct) {

    /** Ring slots: the window in buckets of the step, at most 64 (a value's slots are one long's bits). */
    int slots() {
      return (int) (windowMs / stepMs);
    }
  }

  static Spec read(Path path) throws IOException {
    ObjectMapper mapper = new ObjectMapper()
        .setPropertyNamingStrategy(PropertyNamingStrategies.SNAKE_CASE)
        .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
    Spec spec = mapper.readValue(path.toFile(), Spec.class);
    for (Branch branch : spec.branches()) {
      if (branch.windowMs() % branch.stepMs() != 0 || branch.slots() < 1 || branch.slots() > 64) {
        throw new IllegalArgumentException(branch.name() + ": the window must be 1 to 64 whole steps");
      }
    }
    return spec;
  }

  /** The branches of each entity, in the spec's order. */
  Map<String, List<Branch>> byEntity() {
    Map<String, List<Branch>> grouped = new LinkedHashMap<>();
    for (Branch branch : branches) {
      grouped.computeIfAbsent(branch.entity(), e -> new ArrayList<>()).add(branch);
    }
    return grouped;
  }

  /** Every event field a branch reads: its entity and the fields it counts distinct values of. */
  Set<String> fields() {
    Set<String> fields = new LinkedHashSet<>();
    for (Branch branch : branches) {
      fields.add(branch.entity());
      fields.addAll(branch.distinct());
    }
    return fields;
  }
}
