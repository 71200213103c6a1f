"""cacstream.engine"""
