"""Generated gRPC stubs of the public API (protos/recsvc/v1/), written at build time by setup.py.

Never edit or commit the *_pb2*.py files; `make stubs` regenerates them.
"""
