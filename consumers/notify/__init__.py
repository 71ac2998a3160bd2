"""Receiver integrations: one module per kind (email, webhook), each a sender with one
`send` coroutine that raises SendError with a reason and whether retrying can help."""
