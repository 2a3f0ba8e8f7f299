"""Repository-wide pytest configuration; fixtures live in tests/support/ and are imported explicitly."""
