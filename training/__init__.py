"""cacstream.training"""
