"""Mail we send: outbox rows, Jinja2 rendering, the sender loop."""
