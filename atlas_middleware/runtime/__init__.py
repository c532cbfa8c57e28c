"""Running what the teaching flow decides: the drivers, and the streams a caller iterates."""
