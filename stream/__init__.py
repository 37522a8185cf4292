"""swim-stream live runtime: capture -> ring buffer -> TV-L1 flow -> fused I3D -> decisions -> outputs."""

__version__ = "0.1.0"
