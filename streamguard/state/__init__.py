"""Local state: RocksDB (rocksdict) stores per internal partition, their key layout and changelog."""
