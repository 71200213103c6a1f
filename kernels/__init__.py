"""cacstream.kernels"""
