"""neve.gateway"""
