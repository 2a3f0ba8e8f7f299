"""gRPC adapters: proto <-> domain, request checks, status codes. Nothing here decides."""
