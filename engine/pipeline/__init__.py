"""The scoring pipeline shared by `cacstream score` (a folder at once) and `cacstream watch` (a stream)."""
