"""Client connections: protocol, login, state machine, cancel routing."""
