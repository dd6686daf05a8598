"""neve.server"""
