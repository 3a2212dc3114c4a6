"""Sans-IO PostgreSQL wire protocol: constants, framing, message codecs, transaction state."""
