"""neve.cli"""
