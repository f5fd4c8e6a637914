"""The queue side: broker topology, the outbox relay, the worker and one handler module per event family."""
