"""Repository-wide pytest configuration.

Fixtures live in tests/support/ and are imported explicitly by the modules that use them.
"""
