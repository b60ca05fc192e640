"""Code both services share: logging, auth, template rules and gRPC serving.

The services share nothing else but the protos.
"""
