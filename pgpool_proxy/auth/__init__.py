"""Sans-IO authentication exchanges: SCRAM-SHA-256 (both sides) and md5."""
