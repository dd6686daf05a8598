"""neve.security"""
