"""`cacstream train` and `cacstream export` command modules."""
