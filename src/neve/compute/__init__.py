"""neve.compute"""
