"""The local stack's runtime: the SQLite event bus and its patterns, the routes and topic rules read from
template.yaml, AWS-shaped events, the job and device runners, S3 events and the raw-folder watcher, the IoT rule
engine, and the stack itself (Stack wires the adapters to the use cases; `up` runs it all).
"""
