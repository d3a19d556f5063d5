"""The HTTP API: FastAPI app, live event store, hot model reload. Start it with `recsys serve`."""
