"""Offline side of swim-stream: simulator, annotations, datasets, training, evaluation, model export.

May import from ``stream``; ``stream`` never imports from here.
"""
