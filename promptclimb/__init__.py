"""promptclimb's public Python surface: the gRPC stubs of its protos and `promptclimb.client`.

The stubs (`promptclimb.scorer.v1`, `promptclimb.optimizer.v1`) are compiled from
protos/ when the package is built (setup.py); they are not in the repository.
"""
