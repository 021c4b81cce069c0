"""The inference node: HTTP API (api), payment checks (payments), durable receipts (receipts),
settlement (settler), wired together in service."""
