package io.streamguard.bench.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/** An event as the peer needs it: its id, type, time and the fields the branches read (absent if null). */
record Event(String id, String type, long ts, Map<String, String> fields) {

  private static final ObjectMapper JSON = new ObjectMapper();

  String field(String name) {
    return fields.get(name);
  }

  /**
   * Reads a contract event, or the slim event it writes to its repartition topics: the same JSON
   * object with only the fields the spec names, so both read the same way.
   */
  static Serde<Event> serde(Set<String> wanted) {
    Serializer<Event> serializer = (topic, event) -> event.toJson();
    Deserializer<Event> deserializer = (topic, bytes) -> fromJson(bytes, wanted);
    return Serdes.serdeFrom(serializer, deserializer);
  }

  private static Event fromJson(byte[] bytes, Set<String> wanted) {
    try {
      JsonNode node = JSON.readTree(bytes);
      Map<String, String> fields = new HashMap<>();
      for (String name : wanted) {
        JsonNode value = node.get(name);
        if (value != null && !value.isNull()) {
          fields.put(name, value.asText());
        }
      }
      return new Event(node.get("event_id").asText(), node.get("type").asText(), node.get("ts").asLong(), fields);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private byte[] toJson() {
    ObjectNode node = JSON.createObjectNode().put("event_id", id).put("type", type).put("ts", ts);
    fields.forEach(node::put);
    try {
      return JSON.writeValueAsBytes(node);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
