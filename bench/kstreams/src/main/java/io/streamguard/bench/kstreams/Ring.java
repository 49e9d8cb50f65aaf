package io.streamguard.bench.kstreams;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.util.Arrays;

/**
 * One branch's window for one entity: a ring of buckets of the branch's step (streamguard's
 * resolution), each with its count, and per distinct field the values seen with the slots they were
 * seen in (one bit each), at most {@code cap} of them, as streamguard's {@code distinct_cap}.
 *
 * <p>An event adds to its own bucket and reads the buckets of the window that ends there: the window
 * rounded to the step, as streamguard's is. A bucket older than the one the ring holds in its slot
 * (later by a whole window) is no longer counted.
 */
final class Ring {
  private final long[] buckets; // per slot: the bucket (ts / step) it holds, -1 if none
  private final int[] counts;
  private final Distinct[] distinct;

  Ring(int slots, int fields) {
    buckets = new long[slots];
    Arrays.fill(buckets, -1);
    counts = new int[slots];
    distinct = new Distinct[fields];
    Arrays.setAll(distinct, i -> new Distinct());
  }

  /** Counts an event of {@code bucket} and its distinct values (null where absent); false if too old. */
  boolean add(long bucket, String[] values, int cap) {
    int slot = (int) Math.floorMod(bucket, (long) buckets.length);
    if (buckets[slot] > bucket) {
      return false;
    }
    if (buckets[slot] < bucket) {
      buckets[slot] = bucket;
      counts[slot] = 0;
      for (Distinct d : distinct) {
        d.clear(slot);
      }
    }
    counts[slot]++;
    for (int i = 0; i < values.length; i++) {
      if (values[i] != null) {
        distinct[i].add(hash(values[i]), slot, cap);
      }
    }
    return true;
  }

  /** The events counted in the window that ends at {@code bucket}. */
  int count(long bucket) {
    int total = 0;
    for (int slot = 0; slot < buckets.length; slot++) {
      if (inWindow(slot, bucket)) {
        total += counts[slot];
      }
    }
    return total;
  }

  /** The distinct values of field {@code field} in the window that ends at {@code bucket}. */
  int distinct(int field, long bucket) {
    long window = 0;
    for (int slot = 0; slot < buckets.length; slot++) {
      if (inWindow(slot, bucket)) {
        window |= 1L << slot;
      }
    }
    return distinct[field].count(window);
  }

  private boolean inWindow(int slot, long bucket) {
    return buckets[slot] <= bucket && buckets[slot] > bucket - buckets.length;
  }

  /** 64-bit FNV-1a: values are kept as hashes, as streamguard keeps them. */
  private static long hash(String value) {
    long h = 0xcbf29ce484222325L;
    for (int i = 0; i < value.length(); i++) {
      h = (h ^ value.charAt(i)) * 0x100000001b3L;
    }
    return h;
  }

  /** The slots that hold a bucket, then each distinct field's values. */
  void write(DataOutputStream out) throws IOException {
    int held = (int) Arrays.stream(buckets).filter(b -> b >= 0).count();
    out.writeByte(held);
    for (int slot = 0; slot < buckets.length; slot++) {
      if (buckets[slot] >= 0) {
        out.writeByte(slot);
        out.writeLong(buckets[slot]);
        out.writeInt(counts[slot]);
      }
    }
    for (Distinct d : distinct) {
      d.write(out);
    }
  }

  static Ring read(DataInputStream in, int slots, int fields) throws IOException {
    Ring ring = new Ring(slots, fields);
    for (int held = in.readUnsignedByte(); held > 0; held--) {
      int slot = in.readUnsignedByte();
      ring.buckets[slot] = in.readLong();
      ring.counts[slot] = in.readInt();
    }
    for (int i = 0; i < fields; i++) {
      ring.distinct[i] = Distinct.read(in);
    }
    return ring;
  }

  /** Value hashes and, for each, a bit per ring slot it was seen in. */
  private static final class Distinct {
    private long[] hashes;
    private long[] masks;
    private int used;

    Distinct() {
      this(0);
    }

    private Distinct(int used) {
      this.used = used;
      hashes = new long[Math.max(4, used)];
      masks = new long[hashes.length];
    }

    void add(long hash, int slot, int cap) {
      for (int i = 0; i < used; i++) {
        if (hashes[i] == hash) {
          masks[i] |= 1L << slot;
          return;
        }
      }
      if (used == cap) {
        return; // the count stays at the cap, as Quix's capped list does
      }
      if (used == hashes.length) {
        hashes = Arrays.copyOf(hashes, Math.min(cap, 2 * used));
        masks = Arrays.copyOf(masks, hashes.length);
      }
      hashes[used] = hash;
      masks[used++] = 1L << slot;
    }

    /** The slot gets a new bucket: its values go from it, and a value left in no slot goes. */
    void clear(int slot) {
      int kept = 0;
      for (int i = 0; i < used; i++) {
        long mask = masks[i] & ~(1L << slot);
        if (mask != 0) {
          hashes[kept] = hashes[i];
          masks[kept++] = mask;
        }
      }
      used = kept;
    }

    int count(long window) {
      int n = 0;
      for (int i = 0; i < used; i++) {
        if ((masks[i] & window) != 0) {
          n++;
        }
      }
      return n;
    }

    void write(DataOutputStream out) throws IOException {
      out.writeShort(used);
      for (int i = 0; i < used; i++) {
        out.writeLong(hashes[i]);
        out.writeLong(masks[i]);
      }
    }

    static Distinct read(DataInputStream in) throws IOException {
      Distinct d = new Distinct(in.readUnsignedShort());
      for (int i = 0; i < d.used; i++) {
        d.hashes[i] = in.readLong();
        d.masks[i] = in.readLong();
      }
      return d;
    }
  }
}
