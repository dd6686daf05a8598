"""neve.registry"""
