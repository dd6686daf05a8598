"""neve.services"""
