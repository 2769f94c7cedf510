"""CC-Gateway agent-event push receiver that publishes every event to Kafka, in order, per agent."""

__version__ = "0.1.0"
