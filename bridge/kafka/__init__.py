"""The bridge's view of the Kafka cluster, in small modules that import nothing of the bridge but its
settings (the publisher and the supervisor use them, never the other way):

- credentials: the TLS context and SASL password the clients log in with, replaceable while running;
- clients: the options every client of the process shares, and the producer made from them;
- admin: topic creation and the cluster's health check, over clients of their own;
- errors: what Kafka's errors mean for a push (PublishError) and for an operator (describe);
- seams: what the write paths need of a producer and of whatever keeps it, as Protocols;
- patch: the one change made to aiokafka at run time, with the names it relies on.
"""
