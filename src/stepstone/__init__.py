"""Stepstone's command line and demo: the composition root that wires settings to the engine.

It lives outside `engine` so the arrows keep pointing one way: later the projection and API
commands join here without the engine knowing of them.
"""
