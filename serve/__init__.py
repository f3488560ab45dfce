"""The OpenAI-compatible HTTP server: a program built on the public API (`toolace.api`), never imported by the
engine. `server.serve` runs it; `server.create_app` builds the FastAPI app for tests and embedding."""
