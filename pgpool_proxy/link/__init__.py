"""What both ends of a linked client/server pair share: reply matching and prepared statements.

Below the pool and the session, so the backend and the client connection both import it and
neither imports the other."""
