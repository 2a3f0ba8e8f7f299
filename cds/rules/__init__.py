"""The rules: ``engine.Engine`` compiles a catalogue Snapshot into one plan per item code;
one module per rule family. Pure: no gRPC, files, Redis or clocks."""
