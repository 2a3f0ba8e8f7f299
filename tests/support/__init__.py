"""Shared test fixtures and builders. Test modules import what they use explicitly."""
