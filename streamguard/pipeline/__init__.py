"""The event path: stages (pure, testable without a broker) and the Kafka engine that runs them."""
