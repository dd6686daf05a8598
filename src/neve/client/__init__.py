"""neve.client"""
