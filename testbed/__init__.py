"""The CLIP we train here: what the demo, the search benchmark and tests stand on.

The services never import this package: it is one of their users, like the demo.
"""
