"""cacstream.calibration"""
