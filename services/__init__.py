"""One folder per Lambda: parse the event, build the adapters, call one use case."""
