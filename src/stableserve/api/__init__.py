"""Protocol adapters (HTTP and, later, gRPC) over the one core: parse the wire, call ``service``, render."""
