package io.streamguard.bench.kstreams;

import io.streamguard.bench.kstreams.Spec.Branch;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.List;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;

/**
 * Every window of one entity (an IP, a device, ...): a ring per branch of its kind. One record of the
 * entity's key-value store, so that an event costs one read and one write whatever its branches.
 */
record EntityWindows(Ring[] rings) {

  static EntityWindows empty(List<Branch> branches) {
    return new EntityWindows(
        branches.stream().map(b -> new Ring(b.slots(), b.distinct().size())).toArray(Ring[]::new));
  }

  static Serde<EntityWindows> serde(List<Branch> branches) {
    return Serdes.serdeFrom((topic, windows) -> windows.toBytes(), (topic, bytes) -> fromBytes(bytes, branches));
  }

  private byte[] toBytes() {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream(256);
    try (DataOutputStream out = new DataOutputStream(bytes)) {
      for (Ring ring : rings) {
        ring.write(out);
      }
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return bytes.toByteArray();
  }

  private static EntityWindows fromBytes(byte[] bytes, List<Branch> branches) {
    if (bytes == null) {
      return null;
    }
    try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(bytes))) {
      Ring[] rings = new Ring[branches.size()];
      for (int i = 0; i < rings.length; i++) {
        rings[i] = Ring.read(in, branches.get(i).slots(), branches.get(i).distinct().size());
      }
      return new EntityWindows(rings);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
