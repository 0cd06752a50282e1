"""The party session: the context a protocol runs in (rank, links, PRG streams, fixed-point
setting) and the cost recorder. Below the protocols: they import it, never the other way."""
